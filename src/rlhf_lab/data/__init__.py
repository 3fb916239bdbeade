"""Data sources and validation: every source normalised to the rows of DESIGN.md."""
