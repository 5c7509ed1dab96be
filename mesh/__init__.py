"""agp-mesh mesh package."""
