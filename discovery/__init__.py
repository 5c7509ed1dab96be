"""agp-mesh discovery package."""
