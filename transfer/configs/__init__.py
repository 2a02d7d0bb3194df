"""Transfer configs: ``<task>/<profile>.yaml`` composed with hydra, overridden, resolved to a plain dict.

Each YAML starts with ``# @package _global_`` and has the keys ``transfer: {task, init, model, profile}``, ``data_root``,
``seed``, ``method``, ``train: {...}`` and task-specific sections (``mm:`` for mmseg/mmdet tasks).

Per-size recipes: an optional top-level ``size_recipes: {<size>: {<train key>: value}}`` (size as in the model name,
``fm_<size>_...``) replaces ``train`` values for that encoder size, e.g. ViT-L's epochs and layer decay; explicit
``train.<key>=`` overrides still win. The mapping itself is dropped from the resolved config (its effect is in ``train``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from fourm.models.factory import SIZES, model_name

CONFIG_DIR = Path(__file__).resolve().parent
PROFILES = ("paper", "tiny")
# Command-line shortcuts -> config keys. These values are taken verbatim (paths and labels may hold characters
# that hydra's override grammar would reject, e.g. spaces or parentheses); every other override goes through hydra.
SHORTCUTS = {
    "task": "transfer.task",
    "init": "transfer.init",
    "model": "transfer.model",
    "profile": "transfer.profile",
    "data_root": "data_root",
    "method": "method",
    "runs_root": "_runs_root",
    "protocol": "transfer.protocol",
}
PROTOCOLS_FILE = CONFIG_DIR / "protocols.yaml"
# the shared section of transfer/configs/protocols.yaml each protocol reads; only a chosen protocol's section is
# part of a run's config (``probe`` only on tasks that take knn: the frozen-feature classification probes)
PROTOCOL_SECTIONS = {"lora": ("lora",), "probe": ("linear",), "knn": ("knn",)}
DEFAULT_RUNS_ROOT = "runs/transfer"
_MODEL_SIZE = re.compile(r"^fm_(?P<size>[a-z]+)_")


class ConfigError(ValueError):
    """A transfer config or override that cannot be used; the message names the file/key and the fix."""


def config_dir(task: str) -> Path:
    """The folder of a task's ``<profile>.yaml`` files: its registration's ``configs``, else ``transfer/configs/<task>``."""
    from transfer.tasks import tasks as registered

    found = registered().get(task)
    return Path(found.configs) if found is not None and found.configs else CONFIG_DIR / task


def tasks() -> list[str]:
    """Registered tasks that have a config folder."""
    from transfer.tasks import tasks as registered

    return sorted(t for t in registered() if config_dir(t).is_dir() and any(config_dir(t).glob("*.yaml")))


def config_file(task: str, profile: str) -> Path:
    """The YAML of a task and profile; unknown ones raise one error listing what exists."""
    known = tasks()
    if task not in known:
        raise ConfigError(f"unknown transfer task {task!r}; configs exist for {known} (transfer.tasks registers "
                          f"tasks; their configs are in {CONFIG_DIR}/<task>/ or the registration's configs folder)")
    path = config_dir(task) / f"{profile}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in config_dir(task).glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r} for task {task!r}; {config_dir(task)} has {have}")
    return path


def checkpoint_size(path: Path) -> str | None:
    """The factory size of a 4M checkpoint, from its metadata (width and encoder depth); None if it has no 4M config."""
    from safetensors import safe_open

    from fourm.models.checkpoint import parse_metadata

    try:
        with safe_open(str(path), "pt") as f:
            meta = parse_metadata(f.metadata() or {})
    except Exception:  # not a safetensors file: the task reports that when it loads it
        return None
    for size, (dim, _, enc_depth, _) in SIZES.items():
        if meta.get("dim") == dim and meta.get("encoder_depth") == enc_depth:
            return size
    return None


def size_label(size: str) -> str:
    """The paper's name of a model size in a method label: ``base`` -> ``B``, ``large`` -> ``L``, ``xlarge`` -> ``XL``;
    the tiny sizes keep their names (``nano``)."""
    return {"base": "B", "large": "L", "xlarge": "XL"}.get(size, size)


def model_size(model: str) -> str | None:
    """``fm_large_24e_24d_swiglu_nobias`` -> ``large`` (None if the name does not follow the factory scheme)."""
    m = _MODEL_SIZE.match(str(model))
    return m["size"] if m and m["size"] in SIZES else None


def protocol_sections(cfg: dict, task: str, path: Path, pairs: list[tuple[str, str]]) -> None:
    """Check ``transfer.protocol`` against the task and add the chosen protocol's section of protocols.yaml (with
    its ``lora.*`` / ``probe.*`` / ``knn.*`` overrides) to ``cfg``; an override of a section the protocol does not
    read is refused."""
    import yaml

    from transfer.tasks import get_task

    registered = get_task(task)
    protocol = cfg["transfer"].setdefault("protocol", "finetune")
    if protocol not in registered.protocols:
        hint = " (knn is for classification: nearest neighbours need class labels per image)" if protocol == "knn" else ""
        raise ConfigError(f"{path}: transfer task {task!r} takes protocol={'|'.join(registered.protocols)}, "
                          f"not {protocol!r}{hint}")
    defaults = yaml.safe_load(PROTOCOLS_FILE.read_text())
    for section, protocols in PROTOCOL_SECTIONS.items():
        used = protocol in protocols and (section != "probe" or "knn" in registered.protocols)
        given = [(k, v) for k, v in pairs if k.split(".", 1)[0] == section]
        if not used:
            cfg.pop(section, None)
            if given:
                raise ConfigError(f"{path}: {given[0][0]} is set, but protocol={protocol} of task {task!r} does not "
                                  f"read {section}.* (it is read by protocol={'|'.join(protocols)})")
            continue
        node = cfg.setdefault(section, {})
        for k, v in defaults[section].items():
            node.setdefault(k, v)
        for key, value in given:
            sub = key.split(".", 1)[1] if "." in key else ""
            if sub not in node:
                raise ConfigError(f"{path}: unknown override key {key!r}; known keys under {section!r}: "
                                  f"{sorted(node)} ({PROTOCOLS_FILE})")
            new = yaml.safe_load(value) if isinstance(value, str) else value
            _check_type(PROTOCOLS_FILE, key, node[sub], new)
            node[sub] = new
    if "probe" in cfg:
        check_probe_blocks(cfg, path)
    if "lora" in cfg:
        from transfer.lora import target_pattern

        rank = cfg["lora"].get("rank")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"{path}: lora.rank={rank!r}: give a rank >= 1")
        try:
            target_pattern(cfg["lora"].get("targets") or [])
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None


def check_probe_blocks(cfg: dict, path: Path) -> None:
    """``probe.blocks`` within the encoder's depth (read from the checkpoint's metadata, else the model's config) and
    the blocks the feature cache keeps."""
    from fourm.models import config_for

    blocks = cfg["probe"].get("blocks") or []
    if not blocks or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
        raise ConfigError(f"{path}: probe.blocks={blocks!r}: give positive block counts, e.g. [1, 4]")
    t = cfg["transfer"]
    init = Path(str(t.get("init"))).expanduser()
    size = checkpoint_size(init) if init.is_file() else None
    model = model_name(size) if size else t.get("model")
    try:
        depth = int(config_for(model)["encoder_depth"])
    except (KeyError, ValueError):
        return  # an unknown model is reported where the encoder is built
    from transfer.probe import CACHE_BLOCKS

    if max(blocks) > min(depth, CACHE_BLOCKS):
        raise ConfigError(f"{path}: probe.blocks={blocks}: the encoder ({model}) has {depth} blocks and the feature "
                          f"cache keeps the last {CACHE_BLOCKS}; use counts up to {min(depth, CACHE_BLOCKS)}")


def check_low_shot(cfg: dict, path: Path) -> None:
    """``data.train_fraction`` in (0, 1] and ``data.shots_per_class`` a positive integer (not both)."""
    data = cfg.get("data") or {}
    fraction, shots = data.get("train_fraction"), data.get("shots_per_class")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction <= 1):
        raise ConfigError(f"{path}: data.train_fraction={fraction!r} must be in (0, 1] (0.01 for 1% of the training set)")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ConfigError(f"{path}: data.shots_per_class={shots!r} must be a positive integer (or null)")
    if shots is not None and fraction not in (None, 1, 1.0):
        raise ConfigError(f"{path}: set data.train_fraction or data.shots_per_class, not both "
                          f"(train_fraction={fraction}, shots_per_class={shots})")


def _compose(task: str, profile: str, hydra_overrides: list[str]):
    from fourm.configs import ComposeError, compose

    config_file(task, profile)  # unknown task or profile: one error listing what exists
    try:
        return compose(config_dir(task), profile, hydra_overrides, job_name="transfer")
    except ComposeError as e:
        raise ConfigError(str(e)) from None


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _flat_keys(v, key + ".")
    return out


def _lookup(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(key)
        d = d[part]
    return d


def _assign(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value


def _check_type(path: Path, key: str, old, new) -> None:
    """An override may set null, or a value of the default's type (an int where a float is expected is fine)."""
    if old is None or new is None or (isinstance(old, str) and old.startswith("${")):
        return
    if isinstance(old, bool) or isinstance(new, bool):
        ok = isinstance(old, bool) and isinstance(new, bool)
    elif isinstance(old, float):
        ok = isinstance(new, (int, float))
    elif isinstance(old, (list, tuple)):
        ok = isinstance(new, (list, tuple))
    else:
        ok = isinstance(new, type(old))
    if not ok:
        raise ConfigError(f"{path}: override {key}={new!r} has type {type(new).__name__}, but {key} is a "
                          f"{type(old).__name__} (default {old!r})")


def parse_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["a.b=1", ...]`` -> ``[("a.b", "1"), ...]``; anything that is not KEY=VALUE is refused."""
    pairs = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. task=in1k, train.epochs=2)")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value))
    return pairs


def resolve(task: str, profile: str = "paper", overrides: Iterable[str] | dict = ()) -> dict:
    """The resolved config of ``task``/``profile`` with overrides (``["train.epochs=2", "init=random", ...]`` or a dict).

    Shortcut keys (:data:`SHORTCUTS`) are set verbatim; other keys go through hydra's override grammar and must exist in
    the YAML (``+key=value`` adds a new one). ``transfer.init`` and ``data_root`` must end up set.
    """
    pairs = list(overrides.items()) if isinstance(overrides, dict) else parse_overrides(overrides)
    path = config_file(task, profile)
    verbatim, hydra_pairs, section_pairs = {}, [], []
    for key, value in pairs:
        if key in ("task", "profile", "transfer.task", "transfer.profile"):
            continue  # chosen by the arguments (they pick the file)
        if key in ("model", "transfer.model") and value not in (None, "null"):
            try:  # an architecture, as in every command: a size (base) or a factory name
                value = model_name(str(value))
            except ValueError as e:
                raise ConfigError(f"{path}: {e}") from None
        if key in SHORTCUTS:
            verbatim[SHORTCUTS[key]] = None if value in (None, "null") else str(value)
        elif key.split(".", 1)[0] in PROTOCOL_SECTIONS:
            section_pairs.append((key, value))
        else:
            hydra_pairs.append((key, value))

    from omegaconf import OmegaConf, open_dict

    base = OmegaConf.to_container(_compose(task, profile, []), resolve=False)
    known = set(_flat_keys(base))
    for key, value in hydra_pairs:
        if key.startswith(("+", "~")):
            continue
        if key not in known:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            siblings = sorted(k for k in known if (k.rsplit(".", 1)[0] if "." in k else "") == parent)
            raise ConfigError(f"{path}: unknown override key {key!r}; known keys{' under ' + repr(parent) if parent else ''}: "
                              f"{siblings}. Fix the spelling, or add a new key with +{key}={value}")
    node = _compose(task, profile, [f"{k}={v}" for k, v in hydra_pairs])
    with open_dict(node):
        for key, value in verbatim.items():
            OmegaConf.update(node, key, value, force_add=True)
    cfg = OmegaConf.to_container(node, resolve=True)
    for key, value in hydra_pairs:
        if not key.startswith(("+", "~")):
            _check_type(path, key, _lookup(base, key), _lookup(cfg, key))
    cfg.setdefault("transfer", {})
    if cfg["transfer"].get("task") != task or cfg["transfer"].get("profile") != profile:
        raise ConfigError(f"{path}: transfer.task/profile must be {task!r}/{profile!r} (the file's place), "
                          f"found {cfg['transfer'].get('task')!r}/{cfg['transfer'].get('profile')!r}")

    protocol_sections(cfg, task, path, section_pairs)
    check_low_shot(cfg, path)
    from fourm.tracking import TrackerError, tracker_kind

    try:
        tracker_kind(cfg)
    except TrackerError as e:
        raise ConfigError(f"{path}: {e}") from None

    recipes = cfg.pop("size_recipes", None) or {}
    given_model = any(k in ("model", "transfer.model") for k, _ in pairs)
    init = cfg["transfer"].get("init")
    if not given_model and init not in (None, "random", "???") and Path(str(init)).expanduser().is_file():
        size_of_init = checkpoint_size(Path(str(init)).expanduser())  # a checkpoint's own size picks its recipe
        if size_of_init:
            cfg["transfer"]["model"] = model_name(size_of_init)
    size = model_size(cfg["transfer"].get("model", ""))
    given_method = any(k == "method" for k, _ in pairs)
    default_size = model_size(base.get("transfer", {}).get("model", ""))
    default_label = f"4M-{size_label(default_size)}" if default_size else None
    method = str(cfg.get("method", ""))
    if not given_method and size and default_label and size != default_size and \
            (method == default_label or method.startswith(default_label + " ")):
        cfg["method"] = f"4M-{size_label(size)}" + method[len(default_label):]  # a 4M-L run is not labelled 4M-B
    unknown_sizes = sorted(set(recipes) - set(SIZES))
    if unknown_sizes:
        raise ConfigError(f"{path}: size_recipes has unknown sizes {unknown_sizes}; sizes are {sorted(SIZES)}")
    explicit = {k.lstrip("+") for k, _ in hydra_pairs}
    for key, value in (recipes.get(size) or {}).items():
        path = key if "." in key else f"train.{key}"  # a bare key is a train key; a dotted one names its place
        if path in explicit:
            continue
        node = cfg
        for part in path.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[path.split(".")[-1]] = value

    for key, what in (("transfer.init", "init=<checkpoint.safetensors> or init=random"),
                      ("data_root", "data_root=<folder holding the dataset layouts>")):
        value = _lookup(cfg, key)
        if value in (None, "???", ""):
            raise ConfigError(f"{path}: {key} is not set; pass {what}")
    cfg.setdefault("_runs_root", DEFAULT_RUNS_ROOT)
    if cfg["transfer"]["init"] != "random":
        cfg["transfer"]["init"] = str(Path(cfg["transfer"]["init"]).expanduser().resolve()) \
            if Path(cfg["transfer"]["init"]).expanduser().exists() else cfg["transfer"]["init"]
    cfg["data_root"] = str(Path(cfg["data_root"]).expanduser().resolve())
    missing = [k for k in _flat_keys(cfg) if _lookup(cfg, k) == "???"]
    if missing:
        raise ConfigError(f"{path}: mandatory keys {missing} are not set; pass them as KEY=VALUE")
    return cfg
