"""agp-mesh agents package."""
