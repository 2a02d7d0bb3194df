"""fourm/models."""
