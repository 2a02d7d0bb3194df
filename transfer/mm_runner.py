"""The one boundary to mmengine's ``Runner``: its registry scope, checkpoint loading and config, for mmdet and mmseg.

* **Scope.** mmdet and mmseg register modules under their own names in one process; a runner must be built and used
  inside ``DefaultScope.overwrite_default_scope(<its scope>)`` (leaving it drops the scope the runner registered).
* **Checkpoints under torch >= 2.6.** mmengine 0.10.7 calls ``torch.load`` with the default ``weights_only=True``,
  which rejects the non-tensor objects mmengine itself writes into its checkpoints. :func:`runner_context`
  allow-lists exactly those globals (:func:`checkpoint_globals`) with ``torch.serialization.safe_globals`` for the
  duration of our own runs only: loading stays restricted (no arbitrary pickles) and nothing global is patched.
* **Config.** :func:`formatted_once_config` formats the runner's config with yapf once instead of at start, for the
  dump and in every checkpoint's meta (~2.4 s each on one core).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def checkpoint_globals() -> tuple:
    """The globals mmengine pickles into its checkpoints (message hub buffers, numpy values in the meta)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    np_core = getattr(np, "_core", None) or np.core
    return (
        HistoryBuffer,  # message_hub log_scalars
        np_core.multiarray._reconstruct, np.ndarray, np.dtype, np_core.multiarray.scalar,  # numpy values in the meta
        type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64)), type(np.dtype(np.int32)),
        type(np.dtype(np.bool_)),
        getattr,  # numpy 2 pickles dtype classes as getattr(numpy.dtypes, "<Name>DType")
    )


@contextlib.contextmanager
def runner_context(scope: str):
    """Build and use a Runner inside this: ``scope`` is the default registry scope ("mmdet" or "mmseg"), and
    mmengine's own checkpoints load under torch's safe loader."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope(scope), torch.serialization.safe_globals(list(checkpoint_globals())):
        yield


def formatted_once_config(cfg: dict):
    """An mmengine Config whose ``pretty_text`` is computed once."""
    from mmengine.config import Config

    class FormattedOnceConfig(Config):
        @property
        def pretty_text(self) -> str:
            text = self.__dict__.get("_pretty_text")
            if text is None:
                text = super().pretty_text
                object.__setattr__(self, "_pretty_text", text)  # Config.__setattr__ would store it as a config key
            return text

    return FormattedOnceConfig(cfg)
