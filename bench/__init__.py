"""agp-mesh bench package."""
