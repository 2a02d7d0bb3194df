"""`fourm-bench generate` and `fourm-bench oob` on a tiny world with seeded tokenizers and a tiny random 4M."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.generation import cli as gen_cli
from fourm.generation import oob
from fourm.models.checkpoint import save_checkpoint
from fourm.models.factory import create_model
from results.collect import collect
from results.tables import table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, official_fixture_dir):
    from ablations.tiny_world import build

    root = tmp_path_factory.mktemp("gen")
    params = build(root, num_train=4, num_val=4)
    torch.manual_seed(0)
    mods_out = ["tok_depth@224", "tok_normal@224", "tok_semseg@224", "caption", "det"]
    model = create_model("fm_pico_2e_2d_swiglu_nobias", domains_in=["rgb@224", *mods_out], domains_out=mods_out,
                         image_size=56, patch_size=4,
                         vocab_sizes={"tok_depth@224": 64, "tok_normal@224": 64, "tok_semseg@224": 64})
    ckpt = save_checkpoint(model, root / "model.safetensors")
    toks = [f"tokenizers.{m}={root / 'tokenizers' / f'{m}.safetensors'}" for m in ("depth", "normal", "semseg")]
    return dict(root=root, ckpt=ckpt, toks=toks, text=params["text_tokenizer"], split=root / "world" / "val")


def _generate(tiny, out, *extra):
    return gen_cli.cli([f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"text_tokenizer={tiny['text']}",
                        "targets=tok_depth@224,tok_semseg@224,caption,det", f"input={tiny['split']}", f"out={out}",
                        "text_tokens=8", "steps=2", *extra])


def test_generate_writes_a_grid_and_arrays_per_input_and_skips_them_on_rerun(tiny, tmp_path, capsys):
    out = tmp_path / "gen"
    assert _generate(tiny, out) == 0
    stems = sorted(p.stem for p in (tiny["split"] / "rgb").iterdir())
    assert sorted(p.stem for p in out.glob("*.png")) == stems
    arrays = np.load(out / f"{stems[0]}.npz")
    assert arrays["tok_depth@224.tokens"].shape == (196,)
    assert arrays["tok_depth@224"].shape == (1, 56, 56) and (arrays["tok_depth@224"] > 0).all()  # metres
    assert arrays["tok_semseg@224"].shape == (56, 56)
    texts = json.loads((out / f"{stems[0]}.json").read_text())
    assert isinstance(texts["caption"], str) and isinstance(texts["det"], list)
    png = Image.open(out / f"{stems[0]}.png")
    assert png.size[0] > 5 * 128  # input + four generated tiles
    record = json.loads((out / "generate.json").read_text())
    assert set(record["seeds"]) == set(stems)
    mtime = (out / f"{stems[0]}.png").stat().st_mtime_ns
    assert _generate(tiny, out) == 0
    assert "already done" in capsys.readouterr().out
    assert (out / f"{stems[0]}.png").stat().st_mtime_ns == mtime
    # other settings into the same folder: refused, nothing overwritten
    assert _generate(tiny, out, "seed=3") == 2
    assert "other settings" in capsys.readouterr().out


def test_generate_is_seeded_and_conditioning_can_be_partial_or_edited(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _generate(tiny, a, "num=1", "temp=1.0") == 0
    assert _generate(tiny, b, "num=1", "temp=1.0") == 0
    stem = next(a.glob("*.npz")).stem
    assert np.array_equal(np.load(a / f"{stem}.npz")["tok_depth@224.tokens"], np.load(b / f"{stem}.npz")["tok_depth@224.tokens"])
    gen = gen_cli.Generator(gen_cli.parse_args([f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"text_tokenizer={tiny['text']}",
                                                "cond=rgb@224,caption", "targets=tok_depth@224", "input=x", "out=y",
                                                "inpaint=0,0,28,28", "caption=a red cube"]))
    mod = gen.inputs(torch.zeros(2, 3, 56, 56))
    hidden = mod["rgb@224"]["input_mask"][0].view(14, 14)
    assert hidden[:7, :7].all() and not hidden[7:, :].any() and not hidden[:, 7:].any()
    cap = mod["caption"]
    assert gen.text_tokenizer.decode(cap["tensor"][0][~cap["input_mask"][0]].tolist()) == "a red cube"


def test_generate_errors_name_the_fix(tiny, tmp_path, capsys):
    assert gen_cli.cli([f"checkpoint={tiny['ckpt']}", f"text_tokenizer={tiny['text']}", "targets=tok_depth@224",
                        f"input={tiny['split']}", f"out={tmp_path}"]) == 2
    assert "tokenizers.depth=<run>" in capsys.readouterr().out
    assert gen_cli.cli([f"checkpoint={tiny['ckpt']}", *tiny["toks"], "targets=tok_clip@224",
                        f"input={tiny['split']}", f"out={tmp_path}"]) == 2
    assert "'tok_clip@224' is not a modality of" in capsys.readouterr().out
    assert gen_cli.cli([f"checkpoint={tiny['ckpt']}", *tiny["toks"], "targets=caption", f"input={tiny['split']}",
                        f"out={tmp_path}"]) == 2
    assert "pass text_tokenizer=" in capsys.readouterr().out


def test_oob_run_scores_generation_ceiling_and_baseline(tiny, tmp_path):
    cfg = oob.parse_args([f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"text_tokenizer={tiny['text']}",
                          f"data={tiny['root'] / 'world'}", "split=val", f"runs_root={tmp_path}", "steps=2", "method=pico"])
    run = oob.run_oob(cfg, progress=False)
    m = run.metrics
    assert run.done and m["num_images"] == 4
    for key in ("depth/delta1", "depth/abs_rel", "normal/angle_mean", "normal/angle_median", "normal/within_11deg",
                "semseg/miou", "det/ap", "caption/bleu4"):
        assert {key, f"{key}.ceiling", f"{key}.baseline"} <= set(m)
    assert m["caption/bleu4.ceiling"] == pytest.approx(100.0)  # the WordPiece round trip keeps every word
    assert m["det/ap.ceiling"] > 90 and m["det/ap.baseline"] < 5  # 1000 coordinate bins vs one full-image box
    # a rerun is the finished run, untouched
    assert oob.run_oob(cfg, progress=False).path == run.path
    tbl = table(collect(tmp_path).table, layout="oob")
    assert [r["metric"] for r in tbl.frame.to_dict("records")] == [
        "depth/delta1", "depth/abs_rel", "normal/angle_mean", "normal/angle_median", "normal/within_11deg",
        "semseg/miou", "det/ap", "caption/bleu4"]
    assert 0 <= m["normal/angle_median"] <= 180 and m["normal/angle_mean.ceiling"] < m["normal/angle_mean.baseline"] + 90
    assert tbl.frame["generated"].tolist()[0] == pytest.approx(m["depth/delta1"])


def test_metrics_on_known_inputs():
    gt = torch.rand(2, 1, 8, 8) + 1
    assert oob.median_scaled(3 * gt, gt) == pytest.approx(gt)
    assert oob.bleu4(["a red cube on a floor"], ["a red cube on a floor"]) == pytest.approx(100.0)
    assert oob.bleu4(["the the the the"], ["a red cube on a floor"]) == 0.0
    boxes = [[(1, 1, 20, 20, "cube"), (30, 30, 50, 50, "cone")]]
    assert oob.box_ap(boxes, boxes, 56)["ap"] == pytest.approx(100.0)
    assert oob.box_ap(boxes, [[(30, 30, 50, 50, "cube")]], 56)["ap"] == 0.0
    n = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4), dim=1)
    assert float(oob.normal_errors(n, n).max()) < 1e-3


def test_oob_retrieval_row_for_a_model_with_clip_tokens(tiny, tmp_path, official_fixture_dir):
    """The tiny official 4M-7 checkpoint has tok_clip@224 and reads captions: the retrieval row appears."""
    cfg = oob.parse_args([f"checkpoint={official_fixture_dir / 'tiny_4m7.safetensors'}", f"text_tokenizer={tiny['text']}",
                          f"data={tiny['root'] / 'world'}", "split=val", f"runs_root={tmp_path}", "steps=2"])
    m = oob.run_oob(cfg, progress=False).metrics
    assert {"retrieval/recall@1", "retrieval/recall@5", "retrieval/recall@1.baseline"} <= set(m)
    assert m["retrieval/recall@1.baseline"] == pytest.approx(25.0) and m["retrieval/recall@5.baseline"] == 100.0
    assert m["retrieval/recall@5"] == 100.0  # 4 images: the match is always in the top 5
    assert "depth/delta1" not in m  # no depth tokenizer given: no depth row


def test_recall_at_k():
    keys = torch.eye(4)
    assert oob.recall_at(keys, keys) == {"recall@1": 100.0, "recall@5": 100.0}
    shifted = keys[[1, 2, 3, 0]]
    assert oob.recall_at(shifted, keys)["recall@1"] == 0.0


def test_generate_runs_on_the_official_tiny_checkpoint(tiny, tmp_path, official_fixture_dir):
    out = tmp_path / "official"
    assert gen_cli.cli([f"checkpoint={official_fixture_dir / 'tiny_4m7.safetensors'}", f"text_tokenizer={tiny['text']}",
                        "targets=caption,det", f"input={tiny['split']}", "num=2", "text_tokens=8", f"out={out}"]) == 0
    assert len(list(out.glob("*.png"))) == 2
    texts = json.loads((out / f"{next(out.glob('*.png')).stem}.json").read_text())
    assert isinstance(texts["caption"], str) and isinstance(texts["det"], list)


def _benchmark_folders(root):
    """A NYUv2-layout and a DIODE-layout folder of small landscape images (depth in their units, normals)."""
    rng = np.random.default_rng(0)
    h, w = 48, 64
    for i in range(3):
        nyu = root / "nyuv2"
        for sub, arr in (("images/test", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                         ("annotations/test", rng.integers(500, 6000, (h, w)).astype(np.uint16)),
                         ("normals/test", rng.integers(1, 256, (h, w, 3), dtype=np.uint8))):
            (nyu / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(nyu / sub / f"{i:04d}.{'jpg' if sub.startswith('images') else 'png'}")
    for subset, n in (("indoors", 2), ("outdoor", 1)):
        for i in range(n):
            scan = root / "diode" / "val" / subset / f"scene_{i:05d}" / "scan_00001"
            scan.mkdir(parents=True, exist_ok=True)
            name = f"{i:05d}_00001_{subset}_000"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(scan / f"{name}.png")
            depth = rng.uniform(0.5, 50.0, (h, w, 1)).astype(np.float32)
            np.save(scan / f"{name}_depth.npy", depth)
            mask = np.ones((h, w), np.float32)
            mask[:4] = 0
            np.save(scan / f"{name}_depth_mask.npy", mask)
            normal = rng.normal(size=(h, w, 3)).astype(np.float32)
            np.save(scan / f"{name}_normal.npy", normal / np.linalg.norm(normal, axis=-1, keepdims=True))
    return root


@pytest.mark.parametrize("benchmark,align", [("nyuv2", "lstsq"), ("diode", "lstsq_disparity")])
def test_oob_on_benchmark_layouts(tiny, tmp_path, benchmark, align):
    from fourm.per_sample import read_per_sample, value

    data = _benchmark_folders(tmp_path / "bench")
    cfg = oob.parse_args([f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"data={data}", f"benchmark={benchmark}",
                          f"align={align}", f"runs_root={tmp_path / 'runs'}", "steps=2"])
    run = oob.run_oob(cfg, progress=False)
    m, rc = run.metrics, run.config
    assert (rc["benchmark"], rc["align"]) == (benchmark, align)  # both name the run
    assert m["num_images"] == 3
    subsets = [""] if benchmark == "nyuv2" else ["indoors/", "outdoor/"]
    for sub in subsets:
        for key in ("depth/{}delta1", "depth/{}abs_rel", "depth/{}rmse", "normal/{}angle_mean", "normal/{}within_30deg"):
            k = key.format(sub)
            assert {k, f"{k}.ceiling", f"{k}.baseline", f"{k}.ci95"} <= set(m), k
        assert 0 <= m[f"depth/{sub}delta1"] <= 100 and m[f"normal/{sub}angle_mean"] <= 180
    arrays, spec_ = read_per_sample(run.path)
    for key in spec_:  # the per-image rows give back every reported mean
        assert value(arrays, spec_[key]) == pytest.approx(m[key])
    if benchmark == "diode":
        assert arrays["depth__indoors__delta1__scored"].sum() == 2 and arrays["depth__outdoor__delta1__scored"].sum() == 1
    other = oob.parse_args([f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"data={data}", f"benchmark={benchmark}",
                            "align=median", f"runs_root={tmp_path / 'runs'}", "steps=2"])
    assert oob.run_config(other) != oob.run_config(cfg)


def test_depth_alignments_recover_an_affine_prediction():
    from fourm.generation.zero_shot import align_depth, depth_metrics

    gt = torch.rand(1, 8, 8) * 4 + 1
    gt[0, 0, 0] = 0  # no depth: ignored by every fit and metric
    assert align_depth(gt * 2.5, gt, "median") == pytest.approx(gt * 2.5 * (1 / 2.5), abs=1e-5)
    fitted = align_depth(gt * 0.5 + 0.3, gt, "lstsq")
    assert fitted[gt > 0] == pytest.approx(gt[gt > 0], abs=1e-4)
    disparity = 1 / gt.clamp_min(1e-6)
    pred = 1 / (disparity * 3 + 0.1)  # a depth whose inverse is affine in the true inverse depth
    fitted = align_depth(pred, gt, "lstsq_disparity")
    assert fitted[gt > 0] == pytest.approx(gt[gt > 0], rel=1e-4)
    m = depth_metrics(fitted, gt)
    assert m["delta1"] == 100.0 and m["abs_rel"] < 1e-4 and m["rmse"] < 1e-3


def test_benchmark_errors_name_the_folder(tiny, tmp_path, capsys):
    base = [f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"data={tmp_path}", f"runs_root={tmp_path / 'runs'}"]
    assert oob.cli(base + ["benchmark=kitti"]) == 2 and "choose 4m" in capsys.readouterr().out
    assert oob.cli(base + ["benchmark=nyuv2", "align=mean"]) == 2 and "align='mean'" in capsys.readouterr().out
    assert oob.cli(base + ["benchmark=diode"]) == 2
    out = capsys.readouterr().out
    assert "diode/val" in out and "_depth.npy" in out and "Traceback" not in out


def test_oob_on_the_coco_layout_scores_boxes_by_class_name(tiny, tmp_path):
    from fourm.data.layouts import write_layouts
    from fourm.generation.zero_shot import square_boxes

    data = write_layouts(tiny["root"] / "world", tmp_path / "layouts", which=("coco",))
    cfg = oob.parse_args([f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"text_tokenizer={tiny['text']}", f"data={data}",
                          "benchmark=coco", f"runs_root={tmp_path / 'runs'}", "steps=2"])
    m = oob.run_oob(cfg, progress=False).metrics
    assert m["num_images"] == 4 and {"det/ap", "det/ap50", "det/ap.ceiling", "det/ap.baseline"} <= set(m)
    assert m["det/ap.ceiling"] > 90 and m["det/ap.baseline"] < 5
    # a landscape image's boxes in its centred square at 100 px: shifted, clipped, scaled, the outside one dropped
    boxes = [(10, 0, 30, 20, "a"), (0, 0, 5, 5, "b"), (50, 10, 65, 30, "c")]
    assert square_boxes(boxes, 40, 80, 100) == [(0.0, 0.0, 25.0, 50.0, "a"), (75.0, 25.0, 100.0, 75.0, "c")]


def _panoptic_from_world(world_val, coco):
    """COCO panoptic annotations for the world's COCO layout: one segment per semantic class, categories by name."""
    from fourm.data.world import SEMSEG_CLASSES

    folder = coco / "annotations" / "panoptic_val2017"
    folder.mkdir(parents=True)
    cats = [{"id": c, "name": n, "isthing": 0} for c, n in enumerate(SEMSEG_CLASSES) if c]
    anns = []
    for p in sorted((world_val / "semseg").glob("*.png")):
        sem = np.asarray(Image.open(p)).astype(np.uint8)
        rgb = np.zeros((*sem.shape, 3), np.uint8)
        rgb[..., 0] = sem  # segment id = class id (< 256): R carries it
        Image.fromarray(rgb).save(folder / p.name)
        anns.append({"file_name": p.name, "image_id": int(p.stem) + 1,
                     "segments_info": [{"id": int(c), "category_id": int(c), "iscrowd": 0} for c in np.unique(sem) if c]})
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps({"annotations": anns, "categories": cats}))


@pytest.mark.parametrize("benchmark", ["ade20k", "coco"])
def test_oob_semseg_matches_classes_by_name(tiny, tmp_path, benchmark):
    from fourm.data.layouts import write_layouts
    from fourm.per_sample import read_per_sample, value

    data = write_layouts(tiny["root"] / "world", tmp_path / "layouts", which=(benchmark,))
    if benchmark == "coco":
        _panoptic_from_world(tiny["root"] / "world" / "val", data / "coco")
    args = [f"checkpoint={tiny['ckpt']}", *tiny["toks"], f"text_tokenizer={tiny['text']}", f"data={data}",
            f"benchmark={benchmark}", f"runs_root={tmp_path / 'runs'}", "steps=2"]
    assert oob.cli(args) == 2  # without the model's class names there is nothing to match
    run = oob.run_oob(oob.parse_args(args + ["model_classes=world"]), progress=False)
    m = run.metrics
    assert m["semseg/classes_matched"] == 14  # every world class but void
    for key in ("semseg/miou", "semseg/pixel_acc"):
        assert {key, f"{key}.ceiling", f"{key}.baseline"} <= set(m) and 0 <= m[key] <= 100
    assert 0 < m["semseg/miou.baseline"] < m["semseg/pixel_acc.baseline"]  # one class everywhere: 1 of 14 IoUs
    arrays, spec_ = read_per_sample(run.path)
    assert value(arrays, spec_["semseg/miou"]) == pytest.approx(m["semseg/miou"]) and "semseg/miou.ci95" in m
    assert ("det/ap" in m) == (benchmark == "coco")  # COCO scores the boxes too when a text tokenizer is given


def test_benchmark_images_and_maps_share_the_centred_square(tmp_path):
    from fourm.generation.zero_shot import load_rgb, map_at

    rgb = np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    Image.fromarray(rgb[:, 20:60]).save(tmp_path / "square.png")
    assert torch.equal(load_rgb(tmp_path / "wide.png", 32), load_rgb(tmp_path / "square.png", 32))
    depth = np.arange(40 * 80, dtype=np.float32).reshape(40, 80)
    assert torch.equal(map_at(depth, 40)[0], torch.from_numpy(depth[:, 20:60]))
