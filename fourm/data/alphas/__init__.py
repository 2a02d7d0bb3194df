"""Alphas mixtures in the official 4M YAML format; load one by file name with fourm.data.masking.load_alphas."""
