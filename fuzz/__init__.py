"""Fuzz targets for every function that parses peer bytes (run with `make fuzz`)."""
