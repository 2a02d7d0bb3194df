"""fourm: the 4M stack (modalities, data, tokenizers, the FourM model, pretraining)."""

__version__ = "0.1.0"
