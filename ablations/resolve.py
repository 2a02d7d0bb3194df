"""Resolve many pretraining configs quickly, with the semantics of ``fourm.pretrain.loop.resolve``.

Hydra's compose costs ~0.1 s, too slow for thousand-point grids. Points differ mostly in values, rarely in config
group choices, so this composes once per distinct group selection (``model=base``, ``budget=paper``...) with hydra
itself, then applies each point's value overrides to a copy in struct mode (an unknown key fails as in hydra; ``+key``
adds one). ``tests/ablations`` checks it against ``loop.resolve`` on the shipped grids.
"""
from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from fourm.configs import compose
import fourm.pretrain.loop as loop

CONFIG_DIR = Path(loop.__file__).parent / "configs"


class ResolveError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class PretrainResolver:
    """``resolver({key: hydra value text}) -> dict`` (a plain, resolved config)."""

    def __init__(self, config_dir: Path = CONFIG_DIR):
        self.config_dir = Path(config_dir)
        self.groups = {p.name for p in self.config_dir.iterdir() if p.is_dir()}
        self.parser = OverridesParser.create()

    _bases: dict[tuple, object] = {}  # (config dir, group choices) -> composed config, shared within the process

    def _base(self, group_overrides: tuple[str, ...]):
        key = (str(self.config_dir), group_overrides)
        if key not in self._bases:
            self._bases[key] = compose(self.config_dir, "config", list(group_overrides))
        return self._bases[key]

    def __call__(self, overrides: dict[str, str]) -> dict:
        parsed = []
        for key, value in overrides.items():
            text = f"{key}={value}"
            try:
                parsed.append((key, self.parser.parse_overrides([text])[0]))
            except Exception as e:  # hydra's grammar errors
                raise ResolveError(key, f"override {text!r} does not parse: {e}") from None
        groups = tuple(sorted(f"{k}={o.value()}" for k, o in parsed if o.key_or_group in self.groups and not o.package))
        try:
            base = self._base(groups)
        except Exception as e:
            bad = next((g.split("=")[0] for g in groups), "defaults")
            options = {g: sorted(p.stem for p in (self.config_dir / g).glob("*.yaml")) for g in sorted(self.groups)}
            raise ResolveError(bad, f"config groups {list(groups)} do not compose: {str(e).splitlines()[0]}; "
                                    f"options: {options}") from None
        cfg = base.copy()
        for key, o in parsed:
            if o.key_or_group in self.groups and not o.package:
                continue
            if o.is_delete() or o.package:
                raise ResolveError(key, f"override {key}: deletions and packages are not supported in grids")
            try:
                if o.is_add() or o.is_force_add():
                    with open_dict(cfg):
                        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
                else:
                    if not _has(cfg, o.key_or_group):
                        raise KeyError(o.key_or_group)
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
            except KeyError:
                parent = o.key_or_group.rsplit(".", 1)[0] if "." in o.key_or_group else ""
                node = OmegaConf.select(cfg, parent) if parent else cfg
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                raise ResolveError(key, f"no key {o.key_or_group!r} in the pretrain config; keys there: {known}. "
                                        f"Fix the spelling, or add a new key with +{key}=...") from None
            except Exception as e:
                raise ResolveError(key, f"override {key}={overrides[key]}: {e}") from None
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except Exception as e:
            raise ResolveError("config", f"interpolation failed: {e}") from None
        return loop.finish_config(plain, list(overrides))


def _has(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True
