"""`fourm-bench oob`: what a pretrained 4M predicts out of the box (no fine-tuning), as a run in the run store.

    fourm-bench oob checkpoint=<model.safetensors> tokenizers.depth=<run> tokenizers.semseg=<run> text_tokenizer=<json> \\
        data=<4M-layout dataset> split=val runs_root=runs/oob [method=<label>] [num=] [steps=8] [batch=8]
        [benchmark=4m|nyuv2|diode|coco|ade20k] [align=auto|median|lstsq|lstsq_disparity]
        [model_classes=<json>|world] [classes=<json>]

``benchmark=nyuv2|diode|coco|ade20k`` reads a standard benchmark layout instead of a 4M-layout split and scores
depth and normals, COCO boxes, or semantic segmentation (classes matched by name), zero-shot
(:mod:`fourm.generation.zero_shot`: layouts, alignment, metrics, ``.ci95``).
``align`` (in the run's identity; ``auto``: median on a 4M-layout split, lstsq on a benchmark) aligns relative depth.

Each task generates one target from RGB alone (MaskGIT ``steps`` steps at temperature 0 for token grids, greedy
autoregressive for text) and scores it against the split's ground truth:

* RGB -> depth: ``delta1`` and ``abs_rel`` after per-image alignment (``align=median``: prediction x median(gt) /
  median(pred) over valid pixels, the usual zero-shot depth protocol for metric depth; ``lstsq`` scale and shift;
  ``lstsq_disparity`` scale and shift in inverse depth), with the tokenizers' depth metric;
* RGB -> normals: mean and median angular error, % within 11.25 degrees;
* RGB -> semseg: ``miou`` (and pixel accuracy), the tokenizers' confusion-matrix mIoU;
* RGB -> det: COCO box AP (pycocotools; generated boxes all have score 1);
* RGB -> caption: corpus BLEU-4 against the one reference caption per image (lower-cased words, no smoothing);
* 4M-21 retrieval (``retrieval_dinov2_global_from_rgb``, ``..._from_caption``; the same for ImageBind), when the
  model predicts the global tokens and their MLP VQ-VAE is given (``tokenizers.dinov2_global=<run>``): the embedding
  predicted from RGB alone and from the caption alone, decoded, against the split's labelled embeddings; recall@1/5
  (%), with the tokenizer's ceiling and chance;
* retrieval, when the model has ``tok_clip@224`` and reads captions: CLIP tokens predicted from each caption alone
  and from each image alone, each pooled to one vector (the mean of the model's own embeddings of the predicted
  tokens, L2-normalised), and recall@1/5 (%) of the matching image among the split's images; the baseline is chance.

Every metric is computed three times in the same run: from the generated tokens, from the ground truth passed
through the same tokenizer and decoder (``.ceiling``, what the tokenizer allows at best), and for a trivial baseline
(``.baseline``: one constant depth, median-scaled; the majority class; the mean normal; one full-image box of the
most frequent class; the split's first caption for every image). A task appears when the model has its target and
its tokenizer is given. ``fourm-bench results table --layout oob`` renders the runs.
"""
from __future__ import annotations

import collections
import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fourm.data.text import boxes_to_text, text_to_boxes
from fourm.generation.cli import parse_key_values
from fourm.generation.generator import GenerateError, Generator
from fourm.generation.zero_shot import load_rgb
from fourm.generation.detokenize import sequence_text
from fourm.runs import open_run, run_id
from fourm.modalities import spec, specs
from fourm.modalities.metrics import (
    ReconstructionMeter,
    constant_prediction,
    fit_constant,
    median_scaled,
    scale_shift_aligned,
)
from fourm.tokenizers.modality_io import center_box, crop_resize_flip, list_stems, read_raw, split_root, to_tensor

DEFAULTS = dict(checkpoint=None, text_tokenizer=None, data=None, split="val", runs_root="runs/oob", method=None, num=None,
                steps=8, batch=8, seed=0, threads=None, decode_steps=25, decode_scheduler="", benchmark="4m",
                align="auto", classes=None, model_classes=None)


IMAGE = "rgb"  # the folder of the images every prediction is made from


def oob_targets() -> dict[str, str]:
    """Token modality -> its folder, for every modality whose spec names an out-of-the-box task."""
    return {s.token: s.name for s in specs().values() if s.task and s.token}


# --- metrics -----------------------------------------------------------------------------------------------------
def normal_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angular errors in degrees at the target's valid (non-zero) pixels."""
    valid = target.abs().sum(1) > 0
    cos = F.cosine_similarity(pred.double(), target.double(), dim=1, eps=1e-8)[valid].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def bleu4(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (x100) with one reference per hypothesis: lower-cased words, punctuation split off."""
    def words(s):
        return s.lower().replace(",", " ").replace(".", " ").split()

    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references):
        hw, rw = words(h), words(r)
        hyp_len, ref_len = hyp_len + len(hw), ref_len + len(rw)
        for n in range(1, 5):
            hc = collections.Counter(tuple(hw[i:i + n]) for i in range(len(hw) - n + 1))
            rc = collections.Counter(tuple(rw[i:i + n]) for i in range(len(rw) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(hw) - n + 1, 0)
    if min(match) == 0 or hyp_len == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def box_ap(gt: list[list], pred: list[list], size: int) -> dict[str, float]:
    """COCO box AP / AP50 (x100) of per-image predicted boxes (score 1 each) against per-image ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib
    import io

    names = sorted({b[4] for boxes in gt for b in boxes} | {b[4] for boxes in pred for b in boxes})
    cat = {n: i + 1 for i, n in enumerate(names)}
    anns, dets = [], []
    for img, boxes in enumerate(gt):
        for x0, y0, x1, y1, n in boxes:
            anns.append(dict(id=len(anns) + 1, image_id=img, category_id=cat[n], bbox=[x0, y0, x1 - x0, y1 - y0],
                             area=(x1 - x0) * (y1 - y0), iscrowd=0))
    for img, boxes in enumerate(pred):
        for x0, y0, x1, y1, n in boxes:
            if x1 > x0 and y1 > y0:
                dets.append(dict(image_id=img, category_id=cat[n], bbox=[x0, y0, x1 - x0, y1 - y0], score=1.0))
    if not anns or not dets:
        return {"ap": 0.0, "ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dict(images=[dict(id=i, width=size, height=size) for i in range(len(gt))], annotations=anns,
                            categories=[dict(id=i, name=n) for n, i in cat.items()])
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"ap": 100 * max(float(ev.stats[0]), 0.0), "ap50": 100 * max(float(ev.stats[1]), 0.0)}


# --- the benchmark -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> dict:
    """The oob command's arguments (see the module docstring)."""
    cfg = parse_key_values(argv, DEFAULTS, "oob")
    for k in ("checkpoint", "data"):
        if not cfg[k]:
            raise GenerateError(f"{k}= is required")
    for k in ("num", "threads"):
        if cfg[k] is not None:
            cfg[k] = int(cfg[k])
    from fourm.generation.zero_shot import ALIGNS, BENCHMARKS

    if cfg["benchmark"] not in ("4m", *BENCHMARKS):
        raise GenerateError(f"benchmark={cfg['benchmark']!r}: choose 4m (a 4M-layout split) or one of {list(BENCHMARKS)}")
    if cfg["align"] not in ("auto", *ALIGNS):
        raise GenerateError(f"align={cfg['align']!r}: choose auto or one of {list(ALIGNS)}")
    if cfg["align"] == "auto":  # median for metric depth; zero-shot benchmarks fit scale and shift
        cfg["align"] = "median" if cfg["benchmark"] == "4m" else "lstsq"
    return cfg


def _ground_truth(root: Path, stems: list[str], modality: str, size: int):
    value = spec(modality).value
    if value == "text":
        return [read_raw(root, modality, s).strip() for s in stems]
    if value == "boxes":
        out = []
        for s in stems:
            h = to_tensor(IMAGE, read_raw(root, IMAGE, s)).shape[-1]
            out.append([(x0 * size / h, y0 * size / h, x1 * size / h, y1 * size / h, n)
                        for x0, y0, x1, y1, n, *_ in read_raw(root, modality, s)])
        return out
    xs = []
    for s in stems:
        x = to_tensor(modality, read_raw(root, modality, s))
        xs.append(crop_resize_flip(modality, x, center_box(*x.shape[-2:]), size, False))
    return torch.stack(xs)


@torch.no_grad()
def evaluate(cfg: dict, progress: bool = True, out_dir=None) -> dict[str, float]:
    """Run the benchmark; returns the flat metrics (``<task>/<metric>[.ceiling|.baseline]``)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if cfg.get("benchmark", "4m") != "4m":
        from fourm.generation import zero_shot

        return zero_shot.evaluate(Generator({**_gen_cfg(cfg), "targets": []}), cfg, out_dir, progress)
    root = split_root(cfg["data"], cfg["split"])
    probe = Generator({**_gen_cfg(cfg), "targets": []})
    model = probe.model
    targets = oob_targets()
    tasks = [t for t in targets if t in model.decoder_embeddings and probe.detok.can_decode(t)]
    if not tasks:
        raise GenerateError(f"{cfg['checkpoint']} has none of the targets {list(targets)} with a tokenizer given; pass "
                            "tokenizers.<modality>=<run> (and text_tokenizer= for caption/det)")
    stems = list_stems(root, [IMAGE, *[targets[t] for t in tasks]])[: cfg["num"]]
    size = probe.image_size
    gens = {}
    for t in tasks:  # one loaded model, one schedule per task
        gens[t] = copy.copy(probe)
        gens[t].cfg = {**probe.cfg, "targets": [t]}
    preds: dict[str, list] = {t: [] for t in tasks}
    bar = tqdm(total=len(stems) * len(tasks), desc="oob", unit="gen", disable=not progress)
    for b in range(0, len(stems), cfg["batch"]):
        chunk = stems[b: b + cfg["batch"]]
        # the centred square, as the ground truth is cut (_ground_truth): a non-square image keeps its aspect
        images = torch.stack([load_rgb(spec(IMAGE).path(root, s), size) for s in chunk])
        for t, g in gens.items():
            out = g.generate(images, cfg["seed"] + b)
            preds[t] += g.detok.decode(t, out[t])
            bar.update(len(chunk))
    bar.close()
    metrics: dict[str, float] = {"num_images": len(stems)}
    if "tok_clip@224" in model.decoder_embeddings and "caption" in model.encoder_embeddings and probe.text_tokenizer:
        metrics.update({f"retrieval/{k}": v for k, v in _retrieval(probe, root, stems, cfg, size).items()})
    for target in GLOBAL_TARGETS:
        folder = probe.detok.modality(target) if probe.detok.can_decode(target) else None
        if target in model.decoder_embeddings and folder and (root / folder).is_dir():
            found = _global_retrieval(probe, root, stems, cfg, size, target)
            metrics.update({f"retrieval_{folder}_{k}": v for k, v in found.items()})
    for t in tasks:
        mod = targets[t]
        gt = _ground_truth(root, stems, mod, probe.detok.tokenizers[t].config.image_size if spec(mod).is_map else size)
        metrics.update({f"{mod}/{k}": v for k, v in _score(t, mod, preds[t], gt, probe, cfg.get("align", "median")).items()})
    return metrics


def recall_at(query: torch.Tensor, keys: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Recall@k (%) of key i for query i, by cosine similarity of L2-normalised rows."""
    sim = F.normalize(query, dim=1) @ F.normalize(keys, dim=1).T
    rank = (sim > sim.diag().unsqueeze(1)).sum(1)  # how many keys beat the matching one
    return {f"recall@{k}": 100 * float((rank < k).double().mean()) for k in ks}


def _clip_features(gen: Generator, mod: dict, cond: str, seed: int) -> torch.Tensor:
    """tok_clip@224 predicted from ``mod``'s ``cond`` alone, pooled over the model's embeddings of the tokens."""
    tokens = gen.predict(mod, cond, "tok_clip@224", seed)
    table = gen.model.encoder_embeddings["tok_clip@224"].token_emb.weight if "tok_clip@224" in gen.model.encoder_embeddings \
        else gen.model.decoder_embeddings["tok_clip@224"].to_logits.weight
    return F.normalize(table[tokens].mean(1), dim=1)


def _conditions(gen: Generator, root: Path, chunk: list[str], size: int, with_caption: bool):
    """The mod_dicts of a batch of images: RGB alone, and (``with_caption``) the caption alone."""
    from fourm.generation.modality_dicts import full_sequence_input, init_full_input_modality

    info = gen.model.modality_info
    images = torch.stack([load_rgb(spec(IMAGE).path(root, s), size) for s in chunk])
    mod = {"rgb@224": {"tensor": images}}
    init_full_input_modality(mod, info, "rgb@224", "cpu")
    out = {"rgb@224": mod}
    if with_caption:
        tok = gen.text_tokenizer
        eos = tok.token_to_id("[EOS]")
        ids = [tok.encode(read_raw(root, "caption", s).strip()).ids[: info["caption"]["max_tokens"] - 1] + [eos] for s in chunk]
        out["caption"] = full_sequence_input({}, "caption", ids, tok.token_to_id("[PAD]"))
    return out


def _chance(n: int) -> dict[str, float]:
    return {"recall@1.baseline": 100 / n, "recall@5.baseline": 100 * min(5, n) / n}


def _retrieval(gen: Generator, root: Path, stems: list[str], cfg: dict, size: int) -> dict[str, float]:
    image_f, text_f = [], []
    for b in range(0, len(stems), cfg["batch"]):
        conds = _conditions(gen, root, stems[b: b + cfg["batch"]], size, with_caption=True)
        image_f.append(_clip_features(gen, conds["rgb@224"], "rgb@224", cfg["seed"] + b))
        text_f.append(_clip_features(gen, conds["caption"], "caption", cfg["seed"] + b))
    return {**recall_at(torch.cat(text_f), torch.cat(image_f)), **_chance(len(stems))}


GLOBAL_TARGETS = ("tok_dinov2_global", "tok_imagebind_global")


def _global_retrieval(gen: Generator, root: Path, stems: list[str], cfg: dict, size: int, target: str) -> dict[str, float]:
    """4M-21 retrieval: the global embedding (``target``, decoded by its MLP VQ-VAE) predicted from RGB alone and from
    the caption alone, against the split's labelled embeddings (the keys), as recall@1/5 (%); ``.ceiling``: the keys
    through the tokenizer; ``.baseline``: chance."""
    vq = gen.detok.tokenizers[target]
    keys = torch.stack([torch.as_tensor(np.asarray(read_raw(root, vq.config.modality, s), np.float32)).flatten()
                        for s in stems])
    with_caption = "caption" in gen.model.encoder_embeddings and gen.text_tokenizer is not None
    preds: dict[str, list] = {"rgb@224": [], "caption": []}
    for b in range(0, len(stems), cfg["batch"]):
        conds = _conditions(gen, root, stems[b: b + cfg["batch"]], size, with_caption)
        for cond, mod in conds.items():
            preds[cond].append(vq.decode(gen.predict(mod, cond, target, cfg["seed"] + b)))
    centre = vq.mean  # embeddings of one domain share a large common direction: retrieve on what differs
    ceiling = {f"{k}.ceiling": v for k, v in recall_at(vq.decode(vq.encode(keys)) - centre, keys - centre).items()}
    out = {}
    for cond, name in (("rgb@224", "from_rgb"), ("caption", "from_caption")):
        if preds[cond]:
            found = recall_at(torch.cat(preds[cond]) - centre, keys - centre)
            out.update({f"{name}/{k}": v for k, v in {**found, **ceiling, **_chance(len(stems))}.items()})
    return out


def _gen_cfg(cfg: dict) -> dict:
    return dict(checkpoint=cfg["checkpoint"], text_tokenizer=cfg["text_tokenizer"], tokenizers=cfg["tokenizers"], cond=["rgb@224"],
                steps=cfg["steps"], scheme="maskgit", temp=0.0, text_temp=0.0, top_p=0.0, top_k=0, text_tokens=64,
                cfg=1.0, inpaint=None, caption=None, boxes=None, seed=cfg["seed"], decode_steps=cfg["decode_steps"],
                decode_scheduler=cfg["decode_scheduler"])


def _depth_scores(p: torch.Tensor, gt: torch.Tensor, vq, suffix: str, align: str = "median") -> dict[str, float]:
    meter = ReconstructionMeter("depth")
    relative = getattr(vq.config, "official", False)  # official tokenizers decode standardised (relative) depth
    if align == "median" and not relative:
        aligned = median_scaled(p, gt)
    elif align in ("median", "lstsq"):
        aligned = scale_shift_aligned(p, gt)  # relative depth has no scale of its own to keep
    else:
        from fourm.generation.zero_shot import align_depth

        aligned = torch.stack([align_depth(p[i], gt[i], align) for i in range(len(p))])
    meter.update(aligned, gt)
    m = meter.compute()
    return {f"delta1{suffix}": 100 * m["delta1"], f"abs_rel{suffix}": m["abs_rel"]}


def _semseg_scores(p: torch.Tensor, gt: torch.Tensor, vq, suffix: str, **_) -> dict[str, float]:
    meter = ReconstructionMeter("semseg", num_classes=vq.config.num_classes)
    meter.update(p, gt)
    m = meter.compute()
    return {f"miou{suffix}": 100 * m["miou"], f"pixel_acc{suffix}": 100 * m["pixel_acc"]}


def _normal_scores(p: torch.Tensor, gt: torch.Tensor, vq, suffix: str, **_) -> dict[str, float]:
    err = normal_errors(p, gt)
    return {f"angle_mean{suffix}": float(err.mean()), f"angle_median{suffix}": float(err.median()),
            f"within_11deg{suffix}": 100 * float((err < 11.25).double().mean())}


# what an out-of-the-box task of a map (ModalitySpec.task) reports of a prediction
MAP_SCORES = {"depth": _depth_scores, "semseg": _semseg_scores, "normal": _normal_scores}


def _score(target: str, mod: str, pred: list, gt, gen: Generator, align: str = "median") -> dict[str, float]:
    """The task's metrics for the prediction, the tokenizer's ceiling and the trivial baseline."""
    out = {}
    s = spec(mod)
    if s.task in MAP_SCORES:
        vq = gen.detok.tokenizers[target]
        pred = torch.stack(pred)
        ceiling = torch.cat([vq.reconstruct(gt[i:i + 16]) for i in range(0, len(gt), 16)])
        baseline = constant_prediction(fit_constant(s.metric, gt, num_classes=vq.config.num_classes), gt)
        for suffix, p in (("", pred), (".ceiling", ceiling), (".baseline", baseline)):
            out.update(MAP_SCORES[s.task](p, gt, vq, suffix, align=align))
    elif s.task == "boxes":
        tok, bins, size = gen.text_tokenizer, gen.detok.bins, gen.image_size
        ceiling = [text_to_boxes(sequence_text(tok.encode(boxes_to_text(b, size, bins)).ids, tok), size, bins) for b in gt]
        common = collections.Counter(b[4] for boxes in gt for b in boxes).most_common(1)[0][0]
        baseline = [[(0.0, 0.0, float(size), float(size), common)] for _ in gt]
        for suffix, p in (("", pred), (".ceiling", ceiling), (".baseline", baseline)):
            out.update({f"{k}{suffix}": v for k, v in box_ap(gt, p, size).items()})
    elif s.task == "text":
        tok = gen.text_tokenizer
        ceiling = [sequence_text(tok.encode(c).ids, tok) for c in gt]
        for suffix, p in (("", pred), (".ceiling", ceiling), (".baseline", [gt[0]] * len(gt))):
            out[f"bleu4{suffix}"] = bleu4(p, gt)
    else:
        raise KeyError(f"modality {mod!r}: no out-of-the-box task {s.task!r}; tasks: {[*MAP_SCORES, 'boxes', 'text']}")
    return out


def run_config(cfg: dict) -> dict:
    """What an out-of-the-box run's folder is keyed by (its id is the hash of this): everything but where and how fast."""
    return {"task": "oob", "method": cfg["method"] or Path(cfg["checkpoint"]).stem, "checkpoint": str(cfg["checkpoint"]),
            "tokenizers": {k: str(v) for k, v in sorted(cfg["tokenizers"].items())},
            "text_tokenizer": cfg["text_tokenizer"], "data": str(cfg["data"]), "split": cfg["split"],
            "num": cfg["num"], "steps": cfg["steps"], "seed": cfg["seed"], "decode_steps": cfg["decode_steps"],
            "decode_scheduler": cfg["decode_scheduler"], "benchmark": cfg.get("benchmark", "4m"),
            "align": cfg.get("align", "median"), "classes": cfg.get("classes"), "model_classes": cfg.get("model_classes")}


def run_oob(cfg: dict, progress: bool = True):
    """Evaluate into a run folder of ``runs_root`` keyed by the config; a finished run is returned as is."""
    run = open_run(cfg["runs_root"], run_config(cfg))
    if run.done:
        return run
    metrics = evaluate(cfg, progress, out_dir=run.path)
    run.log(event="oob", **{k: v for k, v in metrics.items() if "." not in k})
    run.write_metrics(metrics)
    run.mark_done()
    return run


def cli(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = parse_args([a for a in argv if a != "--print-config"])
        if "--print-config" in argv:
            print(f"# run id {run_id(run_config(cfg))}")
            print(json.dumps(cfg, indent=2, default=str))
            return 0
        run = run_oob(cfg)
    except (GenerateError, FileNotFoundError, ValueError) as e:  # BenchmarkError is a ValueError
        print(f"fourm-bench oob: {e}")
        return 2
    for k, v in sorted(run.metrics.items()):
        print(f"{k:32s} {v:10.3f}")
    print(f"run folder: {run.path}")
    return 0
