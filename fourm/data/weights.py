"""Labeller weights from local files, loaded without running code from them.

A released labeller checkpoint is read as safetensors, or with ``torch.load(weights_only=True)``; a file that holds
more than tensors (a Lightning or detectron2 pickle) is refused with the command that converts it:

    fourm-bench label convert --in omnidata_dpt_depth_v2.ckpt --out dpt_depth.safetensors

The converter reads pickles through an unpickler that builds inert placeholders for every class it does not know,
so converting never runs code from the file; only tensors and numpy arrays come out.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file that does not fit: names the file, what is wrong and what to do."""


def _tensor_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (or numpy array) in a nested dict, keyed by its dotted path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(_tensor_dict(v, f"{prefix}{k}."))
    elif isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, np.ndarray) and obj.dtype != object:
        out[prefix[:-1]] = torch.from_numpy(np.ascontiguousarray(obj))
    return out


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``state_dict`` (Lightning), ``model`` (detectron2, mmengine's
    ``state_dict``), or the file itself."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), Mapping):
                return _tensor_dict(obj[key])
    return _tensor_dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file, without unpickling code (safetensors or ``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for non-tensor globals, RuntimeError for foreign formats
        raise WeightsError(
            f"{path}: holds more than tensors ({type(e).__name__}), so it is not loaded here; convert it once with "
            f"`fourm-bench label convert --in {path} --out {path.with_suffix('.safetensors')}`") from None
    return _state_dict_of(obj)


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop the first of ``prefixes`` that every key starts with (``model.`` of a Lightning module...)."""
    for p in prefixes:
        if state and all(k.startswith(p) for k in state):
            return {k[len(p):]: v for k, v in state.items()}
    return state


def mismatch(own: Mapping[str, tuple], given: Mapping[str, tuple]) -> str | None:
    """What keeps ``given`` (key -> shape) from loading strictly into ``own``, in one line; None when it fits."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(k for k in set(own) & set(given) if tuple(own[k]) != tuple(given[k]))
    if not (missing or unexpected or shapes):
        return None

    def few(keys):
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
             "shapes differ: " + few([f"{k} {tuple(given[k])} vs {tuple(own[k])}" for k in shapes]) if shapes else ""]
    return "; ".join(p for p in parts if p)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``model.load_state_dict(state)``, strict, with a one-line error naming the keys that do not fit."""
    msg = mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                   {k: tuple(v.shape) for k, v in state.items()})
    if msg:
        raise WeightsError(f"{source}: not the weights of {what}: {msg}")
    model.load_state_dict(state, strict=True)


def read_shapes(path: str | os.PathLike) -> dict[str, tuple] | None:
    """Key -> shape of a safetensors file from its header alone (nothing loaded); None for other formats."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # a damaged header: the same one line as any unreadable weights
        raise WeightsError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


# --- converting a pickled release to safetensors, without running its code -------------------------------------------
class _Inert:
    """Stands in for any class a pickle names that is not a container of weights: built, never run."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return _Inert(*args)


_ALLOWED = {
    ("collections", "OrderedDict"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "bytearray"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor"), ("torch", "FloatStorage"), ("torch", "HalfStorage"),
    ("torch", "DoubleStorage"), ("torch", "LongStorage"), ("torch", "IntStorage"), ("torch", "ByteStorage"),
    ("torch", "BFloat16Storage"), ("torch", "BoolStorage"), ("torch", "Size"), ("torch", "float32"),
}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": "inert." + module})


class _InertPickleModule:
    """A ``pickle_module`` for ``torch.load`` whose unpickler builds inert placeholders for unknown classes."""

    Unpickler = _InertUnpickler
    load = staticmethod(lambda f, **kw: _InertUnpickler(f, **kw).load())
    __name__ = "inert_pickle"


def convert(src: str | os.PathLike, dst: str | os.PathLike, strip: tuple[str, ...] = ()) -> dict[str, int]:
    """Write the tensors of ``src`` (a torch zip / legacy pickle, or a plain pickle such as detectron2's ``.pkl``) to
    ``dst`` (safetensors); returns {"tensors", "elements"}."""
    from safetensors.torch import save

    from fourm import files

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise WeightsError(f"{src}: no such file to convert")
    if dst.exists():
        raise WeightsError(f"{dst}: exists; converting never overwrites (remove it first)")
    try:
        if zipfile.is_zipfile(src):
            obj = torch.load(src, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule)
        else:
            with open(src, "rb") as f:
                head = f.read(2)
            if head[:1] != b"\x80":
                raise WeightsError(f"{src}: neither a torch checkpoint nor a pickle")
            try:  # torch's legacy format starts with a magic number pickle, then the object
                obj = torch.load(src, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule)
            except Exception:
                with open(src, "rb") as f:
                    obj = _InertUnpickler(f, encoding="latin1").load()
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{src}: cannot read it as a checkpoint ({type(e).__name__}: {e})") from None
    state = strip_prefix(_state_dict_of(obj), strip)
    if not state:
        raise WeightsError(f"{src}: no tensors found (looked in state_dict, model and the top level)")
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    files.atomic_write_bytes(dst, save(state, metadata={"source": src.name}))
    return {"tensors": len(state), "elements": int(sum(v.numel() for v in state.values()))}
