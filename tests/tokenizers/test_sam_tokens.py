"""SAM instances as tokens and text: a mask tokenizer trained on the world's instance masks, against the whole-box
baseline, and the instances of an image written and read back in the official string format."""
from __future__ import annotations

import pytest
import torch

from fourm.data import labeling
from fourm.data import serialize as S
from fourm.data.layouts import folder_modality
from fourm.tokenizers import sam


@pytest.fixture(scope="module")
def id_maps(tiny_world, tmp_path_factory):
    import shutil

    split = tmp_path_factory.mktemp("sam") / "train"
    shutil.copytree(tiny_world / "train", split)
    labeling.label_folder(split, labeling.create_labeler("sam_instance", split / "rgb"))
    codec = folder_modality("sam_instance")
    return [codec.decode(p) for p in sorted((split / "sam_instance").glob("*.png"))]


def test_mask_tokens_beat_the_whole_box_and_make_the_official_string(id_maps):
    crops = sam.instance_crops(id_maps)
    assert crops.shape[1:] == (1, 32, 32) and len(crops) > 50
    tok = sam.train_mask_tokenizer(crops[: len(crops) * 3 // 4], sam.mask_tokenizer_config(codebook_size=128), steps=200)
    held_out = crops[len(crops) * 3 // 4:]
    assert tok.encode(held_out).shape == (len(held_out), 4, 4)  # 16 tokens an instance
    m = sam.mask_metrics(tok, held_out)
    print(m)
    assert m["tokens"]["miou"] > m["whole_box"]["miou"] + 0.05

    ids = id_maps[0]
    text = sam.sam_instance_text(ids, tok, num_points=7, seed=0)
    points = S.sam_from_text(text)
    assert len(points) == 7 and S.sam_to_text(points) == text
    for (y, x), p in zip(sam.query_points(ids, 7, 0), points):
        if ids[y, x] == 0:
            assert p.instances == []
            continue
        box, tokens = p.instances[0]
        assert len(tokens) == 16 and box == sam.instance_box(ids == ids[y, x])
        decoded = tok.decode(torch.tensor(tokens).view(1, 4, 4))[0, 0]
        want = sam.crop_mask(ids == ids[y, x])[0]
        assert ((decoded > 0.5) == (want > 0.5)).float().mean() > 0.6  # the tokens are this instance's mask
