"""agp-mesh proto package."""
