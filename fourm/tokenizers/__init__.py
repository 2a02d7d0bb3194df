"""fourm/tokenizers."""
