import io
from pathlib import Path
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.tokenizers.checkpoint import load_tokenizer, save_tokenizer
from fourm.tokenizers.decode import decode_grid
from fourm.tokenizers.encode import encode_dataset
from fourm.tokenizers.modality_io import center_box, crop_resize_flip, read_raw, to_tensor
from fourm.tokenizers.shards import ShardError, TokenShardDataset, iter_shard
from fourm.tokenizers.train import compose_config
from fourm.tokenizers.vqvae import VQVAE


@pytest.fixture
def tokenizers(tmp_path, tiny_config):
    """Freshly initialised (untrained) depth and semseg tokenizers saved as checkpoints: real encoders all the same."""
    paths = {}
    for i, mod in enumerate(["depth", "semseg"]):
        torch.manual_seed(i)
        paths[mod] = tmp_path / f"{mod}.safetensors"
        save_tokenizer(VQVAE(tiny_config(mod)).eval(), paths[mod])
    return paths


def _encode(tiny_world, tokenizers, out, *extra):
    """The project's single tars (``layout=fourm``); the official layouts are the default (see the last tests)."""
    cfg = compose_config("encode", [f"data={tiny_world}", "split=val", f"out={out}", "crops=3", "layout=fourm",
                                    "samples_per_shard=3", *[f"tokenizers.{m}={p}" for m, p in tokenizers.items()],
                                    *extra])
    return encode_dataset(cfg, progress=False)


def test_encode_writes_shards_readable_by_the_dataset(tiny_world, tokenizers, tmp_path):
    out = tmp_path / "shards"
    index = _encode(tiny_world, tokenizers, out)
    assert index["samples"] == 8 and [s["samples"] for s in index["shards"]] == [3, 3, 2]
    assert (out / "val.json").exists() and index["pattern"].endswith("val-{000000..000002}.tar")
    assert index["modalities"]["tok_depth@224"]["vocab_size"] == 64

    # raw shard contents: keyed by 4M modality names, uint16 [crops, h, w] ids
    with tarfile.open(out / "val-000000.tar") as tar:
        names = tar.getnames()
        arr = np.load(io.BytesIO(tar.extractfile("000000.tok_depth@224.npy").read()))
    assert names[0] == "__shard__.json"
    assert {"000000.tok_semseg@224.npy", "000000.rgb@224.npy", "000000.caption.txt", "000000.det.json",
            "000000.crops.json"} <= set(names)
    assert arr.dtype == np.uint16 and arr.shape == (3, 8, 8) and arr.max() < 64

    samples = list(TokenShardDataset(index["pattern"], shuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(8)]
    for s in samples:
        for m in ("tok_depth@224", "tok_semseg@224"):
            assert s[m].dtype == torch.int64 and s[m].shape == (8, 8) and 0 <= int(s[m].min()) and int(s[m].max()) < 64
        assert s["rgb@224"].shape == (3, 32, 32) and s["rgb@224"].dtype == torch.uint8
        assert isinstance(s["caption"], str) and s["caption"]
        assert all(0 <= v <= 1 for box in s["det"] for v in box[:4])

    # crop 0 is the full image: its tokens are exactly what the tokenizer gives for the file
    first = next(iter(TokenShardDataset(index["pattern"], ["tok_depth@224", "det"], crop=0, shuffle=False)))
    model = load_tokenizer(tokenizers["depth"])
    x = to_tensor("depth", read_raw(tiny_world / "val", "depth", "000000"))
    x = crop_resize_flip("depth", x, center_box(*x.shape[-2:]), 32, False)
    assert torch.equal(first["tok_depth@224"], model.encode(x[None])[0])
    boxes = read_raw(tiny_world / "val", "det", "000000")
    assert [b[4] for b in first["det"]] == [b[4] for b in boxes]
    assert first["det"][0][:4] == pytest.approx([v / 32 for v in boxes[0][:4]], abs=1e-4)
    # official det text on request
    text = next(iter(TokenShardDataset(index["pattern"], ["det"], crop=0, shuffle=False, det_format="text")))["det"]
    assert text.startswith("v0=") and boxes[0][4] in text


def test_random_crops_are_aligned_and_reproducible(tiny_world, tokenizers, tmp_path):
    index = _encode(tiny_world, tokenizers, tmp_path / "a")
    with tarfile.open(tmp_path / "a" / "val-000000.tar") as tar:
        crops = json.loads(tar.extractfile("000001.crops.json").read())
    assert crops["size"] == [32, 32] and len(crops["crops"]) == 3
    assert crops["crops"][0] == [0, 0, 32, 32, False]
    assert any(c[:4] != [0, 0, 32, 32] for c in crops["crops"][1:])
    # same config elsewhere -> identical shard bytes (crops seeded by (seed, stem))
    _encode(tiny_world, tokenizers, tmp_path / "b")
    assert (tmp_path / "a" / "val-000001.tar").read_bytes() == (tmp_path / "b" / "val-000001.tar").read_bytes()
    # random crop choice covers the stored crops
    ds = TokenShardDataset(index["pattern"], ["tok_depth@224"], seed=1)
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        seen |= {s["__crop__"] for s in ds}
    assert seen == {0, 1, 2}
    # a shuffle buffer mixes samples across shards and still yields each exactly once
    mixed = [s["__key__"] for s in TokenShardDataset(index["pattern"], ["caption"], shuffle_buffer=5, seed=3)]
    assert sorted(mixed) == [f"{i:06d}" for i in range(8)] and mixed != sorted(mixed)


def test_encode_is_idempotent_and_refuses_to_overwrite_other_configs(tiny_world, tokenizers, tmp_path):
    out = tmp_path / "shards"
    _encode(tiny_world, tokenizers, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    _encode(tiny_world, tokenizers, out)  # same config: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    (out / "val.json").unlink()
    (out / "val-000001.tar").unlink()
    index = _encode(tiny_world, tokenizers, out)  # an interrupted encode: only the missing shard is written
    assert index["shards_written"] == 1
    assert (out / "val-000000.tar").stat().st_mtime_ns == mtimes["val-000000.tar"]
    with pytest.raises(ValueError, match="overwrite=true"):
        _encode(tiny_world, tokenizers, out, "crops=2")


def test_a_grown_split_is_not_read_as_already_encoded(tiny_world, tokenizers, tmp_path):
    """More world images under the same config must not keep the old shards: they are refused, or replaced on request."""
    import shutil

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    files = sorted(p for p in (world / "val").rglob("*") if p.is_file() and p.parent.name != "val")
    last = max(p.stem for p in files)
    held = tmp_path / "held"
    for p in files:
        if p.stem == last:  # the split without its last scene, in every modality
            (held / p.parent.name).mkdir(parents=True, exist_ok=True)
            p.rename(held / p.parent.name / p.name)
    out = tmp_path / "shards"
    n_small = _encode(world, tokenizers, out)["samples"]
    for p in held.rglob("*"):
        if p.is_file():
            p.rename(world / "val" / p.parent.name / p.name)
    with pytest.raises(ValueError, match=rf"set of samples .*{n_small} samples then, {n_small + 1} now.*overwrite=true"):
        _encode(world, tokenizers, out)
    assert _encode(world, tokenizers, out, "overwrite=true")["samples"] == n_small + 1


def test_truncated_shard_is_one_clear_error_naming_the_file(tiny_world, tokenizers, tmp_path):
    index = _encode(tiny_world, tokenizers, tmp_path / "s")
    shard = tmp_path / "s" / "val-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="val-000001.tar.*truncated or corrupt"):
        list(TokenShardDataset(index["pattern"], shuffle=False))
    # cut exactly after a whole member: tar itself cannot tell, the header's sample count does
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    last_of_first_sample = max((m for m in members if m.name.startswith("000003.")), key=lambda m: m.offset)
    end = last_of_first_sample.offset_data + -(-last_of_first_sample.size // 512) * 512
    shard.write_bytes(data[:end])
    with pytest.raises(ShardError, match=r"val-000001.tar.*promises 3 samples, read 1"):
        list(iter_shard(shard))


def test_dataloader_workers_split_shards(tiny_world, tokenizers, tmp_path):
    index = _encode(tiny_world, tokenizers, tmp_path / "s")
    ds = TokenShardDataset(index["pattern"], ["tok_depth@224", "tok_semseg@224"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    keys = [k for batch in loader for k in batch["__key__"]]
    assert sorted(keys) == [f"{i:06d}" for i in range(8)]


def test_decode_writes_a_grid_png(tiny_world, tokenizers, tmp_path):
    index = _encode(tiny_world, tokenizers, tmp_path / "s")
    cfg = compose_config("decode", [f"shards={index['pattern']}", f"data={tiny_world}", f"out={tmp_path / 'g.png'}",
                                    "num=3", "tile=32"])
    path = decode_grid(cfg)
    with Image.open(path) as im:
        w, h = im.size
        a = np.asarray(im.convert("RGB"))
    assert (w, h) == (4 * 34 + 2, 14 + 3 * 34 + 2)  # 2 modalities x (original, decoded), 3 rows
    assert a[16:, :].std() > 10  # not blank


def test_a_feature_map_is_cut_at_the_region_of_the_pixel_crop():
    from fourm.tokenizers.modality_io import scale_box

    # a 16 x 16 map of a 112 px image: 7 px a cell
    assert scale_box((0, 0, 112, 112), (112, 112), (16, 16)) == (0, 0, 16, 16)
    assert scale_box((14, 28, 56, 42), (112, 112), (16, 16)) == (2, 4, 8, 6)
    assert scale_box((110, 110, 2, 2), (112, 112), (16, 16)) == (15, 15, 1, 1)  # at least one cell, inside the map
    # the map of a crop is the crop of the map: a map of cell means of an image, cut and resized like the pixels
    img = torch.rand(3, 112, 112)
    fmap = torch.nn.functional.avg_pool2d(img[None], 7)[0]
    box = (14, 28, 56, 56)
    cut = crop_resize_flip("dinov2", fmap, scale_box(box, (112, 112), (16, 16)), 8, False)
    pixels = torch.nn.functional.avg_pool2d(crop_resize_flip("rgb", img, box, 56, False)[None], 7)[0]
    assert torch.allclose(cut, pixels, atol=1e-5)


def test_encode_names_an_unknown_text_modality_and_a_wrong_tokenizer(tiny_world, tokenizers, tmp_path):
    with pytest.raises(ValueError, match=r"no shard format for \['poses'\]"):
        _encode(tiny_world, tokenizers, tmp_path / "a", "text=[caption,poses]")
    with pytest.raises(ValueError, match="is a 'semseg' tokenizer, not 'depth'"):
        _encode(tiny_world, {"depth": tokenizers["semseg"]}, tmp_path / "b")


def test_pretraining_names_a_modality_the_data_does_not_hold(tiny_world, tokenizers, tmp_path):
    from fourm.tokenizers import layout

    index = _encode(tiny_world, tokenizers, tmp_path / "c")
    src = layout.parse(index["pattern"])
    for mod in ("human_poses", "color_palette"):
        raw = next(layout.read_unit(src, src.units[0], ["tok_depth@224", mod]))
        dec = layout.SampleDecoder(["tok_depth@224", mod], {})
        with pytest.raises(layout.DataError, match=rf"val-000000.tar: sample '{raw.key}' has no '{mod}'; add it, drop "
                                                   "the modality from model.domains_in/out"):
            dec(raw, torch.Generator())


def test_encode_names_a_tokenizer_writing_into_a_mistyped_or_unknown_modality(tiny_world, tiny_config, tmp_path):
    for name, message in (("caption", "writes tokens as 'caption', a sequence modality"),
                          ("tok_dpeth@224", "writes tokens as 'tok_dpeth@224', which is not a registered modality")):
        path = tmp_path / f"{name}.safetensors"
        save_tokenizer(VQVAE(tiny_config("depth", token_modality=name)).eval(), path)
        with pytest.raises(ValueError, match=message):
            _encode(tiny_world, {"depth": path}, tmp_path / name)


def test_encode_writes_the_official_layouts_by_default(tiny_world, tokenizers, tmp_path):
    """Per-modality shards (the default) and the folder layout: the official files, the same tokens and crops as the
    project's single tars, resumable shard by shard."""
    from fourm.tokenizers import layout

    wds = _official(tiny_world, tokenizers, tmp_path / "wds")
    assert wds["layout"] == "wds" and wds["root"] == str((tmp_path / "wds" / "val").resolve())
    assert wds["pattern"].endswith("/val/[tok_depth@224,tok_semseg@224,crop_settings,rgb,caption,det]/shard-{00000..00002}.tar")
    root = tmp_path / "wds" / "val"
    with tarfile.open(root / "tok_depth@224" / "shard-00000.tar") as tar:
        assert tar.getnames()[:2] == ["000000.npy", "000001.npy"]
        tokens = np.load(io.BytesIO(tar.extractfile("000000.npy").read()))
    assert tokens.dtype == np.int16 and tokens.shape == (3, 64)  # [crops, h*w]
    with tarfile.open(root / "crop_settings" / "shard-00000.tar") as tar:
        crops = np.load(io.BytesIO(tar.extractfile("000001.npy").read()))
    with tarfile.open(root / "det" / "shard-00000.tar") as tar:
        det = json.loads(tar.extractfile("000000.json").read())
    with tarfile.open(root / "rgb" / "shard-00000.tar") as tar:
        assert tar.extractfile("000000.png").read() == (tiny_world / "val" / "rgb" / "000000.png").read_bytes()
    own = _encode(tiny_world, tokenizers, tmp_path / "own")
    with tarfile.open(tmp_path / "own" / "val-000000.tar") as tar:
        own_crops = json.loads(tar.extractfile("000001.crops.json").read())
    assert crops.tolist() == [[int(v) for v in c] for c in own_crops["crops"]]
    boxes = read_raw(tiny_world / "val", "det", "000000")
    assert det["image_height"] == 32 and [i["class_name"] for i in det["instances"]] == [b[4] for b in boxes]
    folders = _official(tiny_world, tokenizers, tmp_path / "folders", "layout=folders")
    assert folders["pattern"] == folders["root"] and (Path(folders["root"]) / "det" / "shard-00001" / "000003.json").exists()
    for path in (wds["pattern"], wds["root"], folders["pattern"]):  # the bracket path, or just the split's folder
        for crop in (0, 2):
            a = list(TokenShardDataset(path, ["tok_depth@224", "det"], crop=crop, shuffle=False))
            b = list(TokenShardDataset(own["pattern"], ["tok_depth@224", "det"], crop=crop, shuffle=False))
            assert [s["__key__"] for s in a] == [s["__key__"] for s in b] and len(a) == 8
            assert all(torch.equal(x["tok_depth@224"], y["tok_depth@224"]) for x, y in zip(a, b))
            for x, y in zip(a, b):  # boxes cut from the official JSON by the crop settings: the encoder's boxes
                assert [v[4] for v in x["det"]] == [v[4] for v in y["det"]]
                assert np.allclose([v[:4] for v in x["det"]], [v[:4] for v in y["det"]], atol=1e-4)
    # resumable: a rerun writes nothing; a lost shard file is written again, alone
    mtime = (root / "caption" / "shard-00000.tar").stat().st_mtime_ns
    (tmp_path / "wds" / "val.json").unlink()
    (root / "tok_semseg@224" / "shard-00001.tar").unlink()
    again = _official(tiny_world, tokenizers, tmp_path / "wds")
    assert again["shards_written"] == 1 and (root / "caption" / "shard-00000.tar").stat().st_mtime_ns == mtime
    assert layout.parse(wds["root"]).units == ("/shard-00000.tar", "/shard-00001.tar", "/shard-00002.tar")
    with pytest.raises(ValueError, match="was written by a different encode config"):
        _official(tiny_world, tokenizers, tmp_path / "wds", "crops=2")
    (tmp_path / "wds" / "val.json").unlink()  # an interrupted encode of another config: its shards are not mixed in
    with pytest.raises(ValueError, match="holds shards of another encode config"):
        _official(tiny_world, tokenizers, tmp_path / "wds", "crops=2")


def _official(tiny_world, tokenizers, out, *extra):
    cfg = compose_config("encode", [f"data={tiny_world}", "split=val", f"out={out}", "crops=3", "samples_per_shard=3",
                                    *[f"tokenizers.{m}={p}" for m, p in tokenizers.items()], *extra])
    return encode_dataset(cfg, progress=False)


def test_array_tasks_encode_their_shard_ranges_and_the_last_run_writes_the_index(tiny_world, tokenizers, tmp_path):
    """``part=i/n`` (one SLURM array task each) writes its contiguous range of shards and no index; the run without
    part finds every shard and writes the index; the files equal a one-shot encode's."""
    out = tmp_path / "parts"
    first = _official(tiny_world, tokenizers, out, "part=0/2")
    assert [s["file"] for s in first["shards"]] == ["shard-00000"] and not (out / "val.json").exists()
    second = _official(tiny_world, tokenizers, out, "part=1/2")
    assert [s["file"] for s in second["shards"]] == ["shard-00001", "shard-00002"] and second["shards_written"] == 2
    index = _official(tiny_world, tokenizers, out)
    assert index["shards_written"] == 0 and index["samples"] == 8  # 3 shards of 3, 3, 2 samples
    whole = _official(tiny_world, tokenizers, tmp_path / "whole")
    assert index["encode_id"] == whole["encode_id"]
    for folder in ("tok_depth@224", "crop_settings", "det"):
        for name in ("shard-00000", "shard-00002"):
            with tarfile.open(out / "val" / folder / f"{name}.tar") as a, \
                    tarfile.open(tmp_path / "whole" / "val" / folder / f"{name}.tar") as b:
                assert [(m.name, a.extractfile(m).read()) for m in a] == [(m.name, b.extractfile(m).read()) for m in b]
    with pytest.raises(ValueError, match="part '2/2'"):
        _official(tiny_world, tokenizers, tmp_path / "bad", "part=2/2")


def test_encode_as_a_job_array_from_the_command_line(tiny_world, tokenizers, tmp_path, capsys):
    from fourm.cli import main

    args = ["tokenize", "encode", f"data={tiny_world}", "split=val", f"out={tmp_path / 'arr'}", "crops=3",
            "samples_per_shard=3", *[f"tokenizers.{m}={p}" for m, p in tokenizers.items()]]
    assert main([*args, "--parts", "2", "--dry-run", "--launcher", "slurm", "--gpus", "1",
                 "--gpu-s-per-image", "0.5", "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "encode val [array of 2]" in out and "encode val (index)" in out
    assert "GPU-hours: 0.0011 estimated for 2 jobs" in out and "at most 1 reserved by 1 other jobs" in out
    assert not (tmp_path / "w").exists() and not (tmp_path / "arr").exists()
    assert main([*args, "--parts", "2", "--work", str(tmp_path / "w")]) == 0
    index = json.loads((tmp_path / "arr" / "val.json").read_text())
    assert index["shards_written"] == 0 and len(index["shards"]) == 3  # the two tasks wrote them all
    assert index["encode_id"] == _official(tiny_world, tokenizers, tmp_path / "once")["encode_id"]
    assert main([*args, "--parts", "2", "--bogus"]) == 2


def test_the_official_hierarchical_layout_encodes_as_the_flat_one(tiny_world, tokenizers, tmp_path):
    """``<modality>/<folder>/<key>.<ext>`` (labels written beside such RGB folders): the same samples, keys and tokens
    as the same files in one folder per modality."""
    split = tmp_path / "hier" / "val"
    for folder in (tiny_world / "val").iterdir():
        if not folder.is_dir():
            continue
        for i, f in enumerate(sorted(folder.iterdir())):
            dest = split / folder.name / f"shard-{i % 2:05d}" / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    hier = _official(tmp_path / "hier", tokenizers, tmp_path / "out_hier")
    flat = _official(tiny_world, tokenizers, tmp_path / "out_flat")
    assert hier["samples"] == flat["samples"] == 8
    a = list(TokenShardDataset(hier["pattern"], ["tok_depth@224", "det"], crop=1, shuffle=False))
    b = list(TokenShardDataset(flat["pattern"], ["tok_depth@224", "det"], crop=1, shuffle=False))
    assert sorted(s["__key__"] for s in a) == sorted(s["__key__"] for s in b)
    by_key = {s["__key__"]: s for s in b}
    assert all(torch.equal(s["tok_depth@224"], by_key[s["__key__"]]["tok_depth@224"]) for s in a)
    # a key in two folders cannot be told apart in the shards: one clear error
    (split / "depth" / "shard-00001" / "000000.png").write_bytes((split / "depth" / "shard-00000" / "000000.png").read_bytes())
    for m in ("rgb", "semseg"):
        src = next((split / m / "shard-00000").glob("000000.*"))
        (split / m / "shard-00001" / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match=r"keys \['000000'\] appear in more than one folder"):
        _official(tmp_path / "hier", tokenizers, tmp_path / "out_dup")


def test_per_modality_input_shards_encode_shard_by_shard(tiny_world, tokenizers, tmp_path, capsys):
    """A labelled dataset in the official per-modality shards (rgb, depth, semseg, caption, det): each input shard
    becomes the output shard of its name, with the same samples, keys and tokens as the same files in folders."""
    from fourm.data import official_layout as ol

    val = tiny_world / "val"
    stems = sorted(p.stem for p in (val / "rgb").iterdir())
    folders = ["rgb", "depth", "semseg", "caption", "det"]
    for i, chunk in enumerate([stems[:5], stems[5:]]):
        ol.write_sample_files(tmp_path / "in", "wds", ol.shard_name(i), [
            (s, {f: (next((val / f).glob(f"{s}.*")).suffix[1:], next((val / f).glob(f"{s}.*")).read_bytes())
                 for f in folders}) for s in chunk])
    data = f"{tmp_path / 'in'}/[{','.join(folders)}]/shard-{{00000..00001}}.tar"
    first = _official(data, tokenizers, tmp_path / "out", "part=0/2")
    assert [s["file"] for s in first["shards"]] == ["shard-00000"] and first["samples"] == 5
    index = _official(data, tokenizers, tmp_path / "out")
    assert index["shards_written"] == 1 and index["samples"] == 8 and [s["samples"] for s in index["shards"]] == [5, 3]
    flat = _official(tiny_world, tokenizers, tmp_path / "flat")
    a = list(TokenShardDataset(index["pattern"], ["tok_depth@224", "tok_semseg@224", "det"], crop=2, shuffle=False))
    b = {s["__key__"]: s for s in TokenShardDataset(flat["pattern"], ["tok_depth@224", "tok_semseg@224", "det"], crop=2,
                                                    shuffle=False)}
    assert [s["__key__"] for s in a] == stems
    assert all(torch.equal(s[m], b[s["__key__"]][m]) for s in a for m in ("tok_depth@224", "tok_semseg@224"))
    assert all(s["det"] == b[s["__key__"]]["det"] for s in a)
    with pytest.raises(ValueError, match=r"no 'semseg' folder in its brackets"):
        _official(f"{tmp_path / 'in'}/[rgb,depth]/shard-00000.tar", tokenizers, tmp_path / "bad")
    # as a job array: one task per range of input shards; the estimate takes each to hold the first one's 5 samples
    from fourm.cli import main

    assert main(["tokenize", "encode", f"data={data}", f"out={tmp_path / 'arr'}", "crops=3",
                 *[f"tokenizers.{m}={p}" for m, p in tokenizers.items()], "--parts", "2", "--dry-run", "--gpus", "1",
                 "--gpu-s-per-image", "360", "--work", str(tmp_path / "w")]) == 0
    assert "GPU-hours: 1.0 estimated for 2 jobs" in capsys.readouterr().out


def test_encode_command_line_errors_are_one_line(tmp_path, capsys):
    from fourm.cli import main

    for args, says in [([f"data={tmp_path}/nope/[rgb]/shard-00000.tar"], "shards not found"),
                       ([f"data={tmp_path}/nope"], "no split folder 'train'"),
                       ([f"data={tmp_path}", "crops=abc"], "crops='abc': a whole number >= 1")]:
        assert main(["tokenize", "encode", *args, f"out={tmp_path / 'o'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fourm-bench tokenize encode: ") and says in err and "Traceback" not in err
