"""fourm/tokenizers: VQ-VAE tokenizers for image-like modalities, token shards, and their CLI.

  quantizer.py   VectorQuantizer: cosine lookup, straight-through, commitment loss, learned or EMA codebook,
                 dead-code restarts
  vqvae.py       VQVAEConfig, VQVAE (encode -> [B, h, w] ids, decode -> modality tensor), per-modality adapters
  checkpoint.py  save_tokenizer / load_tokenizer (safetensors, config in __metadata__ as str(value)), training state
  modality_io.py 4M-layout files -> modality tensors; aligned crop / resize / flip
  metrics.py     reconstruction metrics and trivial baselines
  train.py       `fourm-bench tokenize train` (hydra configs in configs/), resumable, logged to fourm.runs
  shards.py      token shard format, write_shard, TokenShardDataset (the pretraining reader)
  encode.py      `fourm-bench tokenize encode`: dataset -> token shards (+ N crops per image)
  decode.py      `fourm-bench tokenize decode`: shard tokens -> original-vs-reconstruction PNG grid
"""
