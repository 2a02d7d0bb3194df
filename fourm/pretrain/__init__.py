"""fourm/pretrain."""
