"""An official 4M data config (``cfgs/default/4m/data/...``) as the data section of a pretraining run.

``fourm-bench pretrain data.official_config=/path/to/cc12m+coyo.yaml`` reads::

    train:
      datasets:
        cc12m:
          in_domains: caption-det-rgb@224-tok_rgb@224-tok_depth@224     # hyphen-separated
          out_domains: caption-det-tok_rgb@224-tok_depth@224
          alphas_config: cfgs/default/4m/alphas_mixture/main/mix_mod7_all2all_rgb2all_a0.5.yaml
          # or input_alphas / target_alphas: one value, or one per domain separated by hyphens
          data_path: /data/cc12m/[tok_rgb@224,tok_depth@224,caption,det,crop_settings]/shard-{00000..09999}.tar
          num_input_tokens: 256        # optional, overrides the budget
        coyo: {...}
      weights: [0.5, 0.5]
    val:
      datasets:
        cc12m: {data_path: ...}

and sets ``data.train`` (one dataset) or ``data.mix`` (several, with their weights), ``data.val``, the model's
domains, the alphas and the token budget from it. An ``alphas_config`` path is used when it exists (relative to the
data config or the working directory), else the shipped mixture of the same name (``fourm/data/alphas``). Keys the
streaming reader has no use for (``use_wds``, ``wds_n_repeats``, shuffle buffers, ``epoch_size``...) are accepted and
ignored. Datasets may differ in their domains and alphas (a caption-only dataset beside a multimodal one): the
model's domains are then the union, and each dataset's rows are masked with its own alphas over the modalities it
has (the others get no tokens); they share the token budget.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

ALPHAS_DIR = Path(__file__).resolve().parents[1] / "data" / "alphas"


class OfficialDataConfigError(ValueError):
    pass


def _domains(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [d for d in value.split("-") if d]
    if isinstance(value, list):
        return [str(d) for d in value]
    raise OfficialDataConfigError(f"{where}: expected hyphen-separated domain names, got {value!r}")


def _alphas(d: dict, ins: list[str], outs: list[str], base: Path, where: str):
    path = d.get("alphas_config")
    if path:
        for cand in (Path(path), base / path):
            if cand.is_file():
                return str(cand.resolve())
        name = Path(path).stem
        if (ALPHAS_DIR / f"{name}.yaml").is_file():
            return name
        raise OfficialDataConfigError(f"{where}.alphas_config={path}: no such file (tried it relative to the working "
                                      f"directory and to {base}) and no shipped mixture {name!r} in {ALPHAS_DIR}; copy "
                                      "the official alphas file beside the data config")
    a_in, a_tg = d.get("input_alphas"), d.get("target_alphas")
    if a_in is None or a_tg is None:
        raise OfficialDataConfigError(f"{where}: give alphas_config, or input_alphas and target_alphas")

    def per(value, doms, key):
        vals = [float(v) for v in str(value).split("-")] if isinstance(value, str) else [float(value)]
        if len(vals) == 1:
            vals = vals * len(doms)
        if len(vals) != len(doms):
            raise OfficialDataConfigError(f"{where}.{key}={value!r}: one value, or one per domain ({len(doms)})")
        return dict(zip(doms, vals))

    pin, ptg = per(a_in, ins, "input_alphas"), per(a_tg, outs, "target_alphas")
    return {m: {"input_alphas": [pin.get(m, 0.0)], "target_alphas": [ptg.get(m, 0.0)]} for m in dict.fromkeys(ins + outs)}


def read(path: str | os.PathLike) -> dict:
    """The fourm-bench settings an official data config stands for:
    ``{"data": {...}, "domains_in", "domains_out", "alphas", "budget": {...}}``."""
    path = Path(path)
    if not path.is_file():
        raise OfficialDataConfigError(f"data.official_config={path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise OfficialDataConfigError(f"{path}: not valid YAML: {e}") from None
    train = (raw or {}).get("train") or {}
    datasets = train.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise OfficialDataConfigError(f"{path}: no train.datasets (the official layout is train: datasets: <name>: "
                                      "{data_path, in_domains, out_domains, alphas_config})")
    weights = train.get("weights") or [1.0] * len(datasets)
    if len(weights) != len(datasets):
        raise OfficialDataConfigError(f"{path}: train.weights has {len(weights)} values for {len(datasets)} datasets")
    seen, mix, per_dataset = None, {}, []
    budget = {}
    for (name, d), w in zip(datasets.items(), weights):
        where = f"{path}: train.datasets.{name}"
        if not isinstance(d, dict) or not d.get("data_path"):
            raise OfficialDataConfigError(f"{where}: no data_path")
        if d.get("type", "multimodal") != "multimodal":
            raise OfficialDataConfigError(f"{where}.type={d['type']!r}: only multimodal datasets are read (text-only "
                                          "huggingface datasets such as C4 are not); write its texts as caption "
                                          "shards (data_path '/data/c4/[caption]/shard-{...}.tar', one <key>.txt a "
                                          "sample) and give it type: multimodal with in_domains/out_domains caption")
        ins, outs = _domains(d.get("in_domains"), f"{where}.in_domains"), _domains(d.get("out_domains"), f"{where}.out_domains")
        this = (ins, outs, _alphas(d, ins, outs, path.parent, where))
        per_dataset.append(this)
        seen = seen or this
        for key in ("num_input_tokens", "num_target_tokens"):
            if d.get(key) is not None:
                if key in budget and budget[key] != int(d[key]):
                    raise OfficialDataConfigError(f"{where}.{key}={d[key]}: differs from another dataset's "
                                                  f"{budget[key]}; the datasets of one run share the token budget")
                budget[key] = int(d[key])
        mix[str(name)] = {"train": str(d["data_path"]), "weight": float(w)}
    val = None
    vds = ((raw.get("val") or {}).get("datasets") or {})
    if vds:
        first = next(iter(vds.values())) or {}
        val = first.get("data_path")
    ins, outs, alphas = seen
    if any(this != seen for this in per_dataset):
        # datasets with domains or alphas of their own: the model's domains are the union, sorted (as the official
        # setup_data builds them); each dataset masks with its alphas over the modalities it has
        ins = sorted(set().union(*(set(i) for i, _, _ in per_dataset)))
        outs = sorted(set().union(*(set(o) for _, o, _ in per_dataset)))
        for entry, (i, o, a) in zip(mix.values(), per_dataset):
            entry.update(domains_in=i, domains_out=o, alphas=a)
    data = {"train": next(iter(mix.values()))["train"], "mix": mix if len(mix) > 1 else None}
    if val:
        data["val"] = str(val)
    return {"data": data, "domains_in": ins, "domains_out": outs, "alphas": alphas, "budget": budget}


def apply(cfg: dict) -> dict:
    """The resolved pretraining config with ``data.official_config`` (if set) read into its data, model domains,
    alphas and budget."""
    path = (cfg.get("data") or {}).get("official_config")
    if not path:
        return cfg
    got = read(path)
    cfg = dict(cfg)
    cfg["data"] = {**cfg["data"], **got["data"]}
    cfg["model"] = {**cfg["model"], "domains_in": got["domains_in"], "domains_out": got["domains_out"]}
    cfg["alphas"] = {"spec": got["alphas"]}
    cfg["budget"] = {**cfg["budget"], **got["budget"]}
    return cfg
