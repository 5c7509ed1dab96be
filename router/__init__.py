"""agp-mesh router package."""
