"""Reports for people: metrics, confusion matrices, curves and image grids."""
