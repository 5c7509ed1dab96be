"""agp-mesh security package."""
