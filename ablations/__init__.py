"""ablations."""
