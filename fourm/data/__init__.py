"""fourm/data."""
