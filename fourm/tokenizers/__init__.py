"""fourm/tokenizers: the official 4M tokenizers and this project's own VQ-VAE tokenizers for image-like modalities, token shards, and their CLI.

  quantizer.py   VectorQuantizer: cosine lookup, straight-through, commitment loss, learned or EMA codebook,
                 dead-code restarts
  vqvae.py       VQVAEConfig, VQVAE (encode -> [B, h, w] ids, decode -> modality tensor), per-modality adapters
  checkpoint.py  save_tokenizer / load_tokenizer (safetensors, config in __metadata__ as str(value)), training state
  modality_io.py 4M-layout files -> modality tensors; aligned crop / resize / flip
  official.py    the official 4M tokenizers (VQVAE, DiVAE) with their official methods, loaded strictly from the
                 released files; vq_nets.py / vq_quantizers.py / unet.py / diffusion.py are their parts
  train.py       `fourm-bench tokenize train` (hydra configs in configs/), resumable, logged to fourm.runs
  layout.py      the official 4M dataset layouts (per-modality shards, one tar, folders): read, written, decoded
  shards.py      the project's single-tar shard format, write_shard, TokenShardDataset (any layout, sample by sample)
  encode.py      `fourm-bench tokenize encode`: dataset -> token shards in the official layout (+ N crops per image)
  decode.py      `fourm-bench tokenize decode`: shard tokens -> original-vs-reconstruction PNG grid
"""


def load_tokenizer(path_or_hub_id, map_location: str = "cpu"):
    """An official 4M tokenizer file or Hugging Face id (from the local cache), or one trained here."""
    from fourm.tokenizers.checkpoint import load_tokenizer as _load

    return _load(path_or_hub_id, map_location)


def build_tokenizer(config: dict):
    """An official tokenizer from its config, without weights (works under ``torch.device("meta")``)."""
    from fourm.tokenizers.official import build_tokenizer as _build

    return _build(config)


def register_architecture(name: str, **sizes) -> None:
    """Register a named ViT encoder (``*_enc``) / decoder (``*_dec``) or patched UNet (``unet_patched*``) size."""
    from fourm.tokenizers.vq_nets import register_architecture as _register

    _register(name, **sizes)


def tokenizer_input(kind: str, raw):
    """The official input transform of a tokenizer kind (``rgb``, ``depth``, ``normal``, ``semseg``, ``sam_mask``,
    ``global``, ``pose``, ``feature_map``) on a batch as stored on disk."""
    from fourm.tokenizers.official import tokenizer_input as _input

    return _input(kind, raw)
