"""`fourm-bench tokenize <train|encode|decode> key=value ...` — hydra overrides of fourm/tokenizers/configs/<cmd>.yaml.

  train   train one VQ-VAE tokenizer on one modality folder      (configs/train.yaml)
  encode  pretokenize a 4M-layout dataset into webdataset shards  (configs/encode.yaml)
  decode  decode shard tokens and write original-vs-reconstruction PNG grids (configs/decode.yaml)
  eval    a tokenizer's reconstruction ceiling on a dataset, official tokenizers too (configs/eval.yaml)

Add --print-config to print the composed config and exit.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": "fourm.tokenizers.train:cli",
    "encode": "fourm.tokenizers.encode:cli",
    "decode": "fourm.tokenizers.decode:cli",
    "eval": "fourm.tokenizers.evaluate:cli",
}


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"fourm-bench tokenize: unknown subcommand {name!r}; choose from {list(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[name].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except (ValueError, FileNotFoundError) as e:
        # config/data errors: one clear line, no traceback
        print(f"fourm-bench tokenize {name}: {e}", file=sys.stderr)
        return 2
