"""One world, its tiny VQ-VAEs and its token data in every layout, shared by the pretraining tests that read files."""
import pytest
import torch

from fourm.data import world
from fourm.tokenizers.encode import encode_dataset
from fourm.tokenizers.train import compose_config
from fourm.tokenizers.train import train as train_tokenizer

LAYOUTS = ("fourm", "wds", "folders")


@pytest.fixture(scope="package")
def world_data(tmp_path_factory):
    """``{layout: {"train": data path, "val": data path}}`` of the same 24 + 4 world images (2 crops, 6 per shard),
    plus ``"root"``."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pretrain_world")
    world.generate(str(root / "world"), 24, 112, seed=0, split="train")
    world.generate(str(root / "world"), 4, 112, seed=1, split="val")
    toks = {}
    for mod in ("depth", "semseg"):
        cfg = compose_config("train", [f"modality={mod}", f"data={root / 'world'}", f"out={root / 'tok'}", "model.image_size=112",
                                       "model.channels=[8,16,32]", "model.codebook_size=64", "epochs=1", "batch_size=8",
                                       "warmup_steps=1", "log_every=1"])
        toks[mod] = str(train_tokenizer(cfg, progress=False).path)
    out = {"root": root}
    for lay in LAYOUTS:
        out[lay] = {}
        for split in ("train", "val"):
            cfg = compose_config("encode", [f"data={root / 'world'}", f"split={split}", f"out={root / lay}",
                                            f"tokenizers.depth={toks['depth']}", f"tokenizers.semseg={toks['semseg']}",
                                            "crops=2", "rgb_size=224", "samples_per_shard=6", f"layout={lay}"])
            out[lay][split] = encode_dataset(cfg, progress=False)["pattern"]
    return out
