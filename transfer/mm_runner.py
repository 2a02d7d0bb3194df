"""The one boundary to mmengine's ``Runner``: its registry scope, checkpoint loading and config, for mmdet and mmseg.

* **Scope.** mmdet and mmseg register modules under their own names in one process; a runner must be built and used
  inside ``DefaultScope.overwrite_default_scope(<its scope>)`` (leaving it drops the scope the runner registered).
* **Checkpoints under torch >= 2.6.** mmengine 0.10.7 calls ``torch.load`` with the default ``weights_only=True``,
  which rejects the non-tensor objects mmengine itself writes into its checkpoints. :func:`runner_context`
  allow-lists exactly those globals (:func:`checkpoint_globals`) with ``torch.serialization.safe_globals`` for the
  duration of our own runs only: loading stays restricted (no arbitrary pickles) and nothing global is patched.
* **Progress.** :class:`RunStoreHook` mirrors the train step's outputs into the run's log and a progress bar.
* **Ranks.** Under torchrun or a multi-task SLURM step, :func:`fourm.distributed.setup` starts the process group
  and exports the torchrun variables; the runner then runs with ``launcher="pytorch"`` (:func:`launcher`), its
  samplers shard the data over ranks, and each rank's batch is the recipe's global batch split (:func:`rank_batch`).
* **Config.** :func:`formatted_once_config` formats the runner's config with yapf once instead of at start, for the
  dump and in every checkpoint's meta (~2.4 s each on one core).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from mmengine.hooks import Hook
from tqdm import tqdm

from fourm import distributed as D


class RunStoreHook(Hook):
    """Training progress into the run store: every ``interval`` iterations (and the last) the train step's outputs
    (losses, accuracies), averaged over ranks, as one ``run.log`` line; a tqdm bar on rank 0."""

    priority = "BELOW_NORMAL"

    def __init__(self, run, total: int, interval: int = 10, desc: str = "transfer"):
        self.run, self.total, self.interval, self.desc = run, total, max(1, interval), desc
        self.bar = None
        self.env = D.detect()

    def before_train(self, runner) -> None:
        self.bar = tqdm(total=self.total, initial=runner.iter, desc=self.desc, unit="it", dynamic_ncols=True,
                        disable=not self.env.is_main)
        if runner.iter:
            self.run.log(event="resumed", step=runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        step = runner.iter + 1
        self.bar.update(1)
        if step % self.interval and step != self.total:
            return
        names = sorted(outputs or {})
        values = torch.tensor([float(outputs[k].detach() if torch.is_tensor(outputs[k]) else outputs[k]) for k in names],
                              dtype=torch.float64)
        values = D.all_reduce_mean(values, self.env)  # mmengine reports each rank's own half of the batch
        record = dict(zip(names, values.tolist()))
        self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
        self.run.log(step=step, lr=max(runner.optim_wrapper.get_lr()["lr"]), **record)

    def after_train(self, runner) -> None:
        if self.bar is not None:
            self.bar.close()


class FrozenEncoderHook(Hook):
    """For the frozen-encoder protocols (``linear``, ``lora``): checkpoints keep what is trained, not the encoder.

    The frozen encoder's weights and buffers are dropped from every checkpoint (resuming rebuilds them from
    ``transfer.init``; mmengine resumes non-strictly); with ``adapter_dir`` the trained parameters (LoRA adapters and
    heads) are written to ``<adapter_dir>/adapter.safetensors`` when training ends."""

    priority = "LOW"

    def __init__(self, adapter_dir=None, metadata: dict | None = None):
        self.adapter_dir, self.metadata = adapter_dir, metadata or {}

    @staticmethod
    def _model(runner):
        model = runner.model
        return getattr(model, "module", model)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = self._model(runner)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        frozen |= {n for n, _ in model.named_buffers() if n.startswith("backbone.")}
        state = checkpoint["state_dict"]
        for key in [k for k in state if k in frozen]:
            del state[key]

    def after_train(self, runner) -> None:
        if self.adapter_dir is not None and D.detect().is_main:
            from transfer.lora import save_adapter

            save_adapter(self._model(runner), self.adapter_dir, self.metadata)


def frozen_encoder_hooks(config: dict, run) -> list:
    """The hooks a config's protocol needs: :class:`FrozenEncoderHook` for ``linear`` and ``lora`` (with the adapter
    file for ``lora``), none for ``finetune``."""
    protocol = config["transfer"].get("protocol", "finetune")
    if protocol not in ("linear", "lora"):
        return []
    adapter_dir = run.path if (protocol == "lora" and run is not None) else None
    meta = {"init": config["transfer"]["init"], "model": config["transfer"]["model"], **(config.get("lora") or {})}
    return [FrozenEncoderHook(adapter_dir, meta)]


def launcher() -> str:
    """mmengine's launcher: "pytorch" on several ranks (the process group is :func:`fourm.distributed.setup`'s)."""
    return "pytorch" if D.detect().distributed else "none"


def model_wrapper() -> dict | None:
    """mmengine's DDP wrapper config on several ranks: unused parameters allowed (the encoder's blocks and norm that
    no feature level reads, as in mmseg's ViT recipes), and ``device_ids=None`` on CPU (mmengine's default names the
    local GPU)."""
    if not D.detect().distributed:
        return None
    cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False, find_unused_parameters=True)
    return cfg if torch.cuda.is_available() else {**cfg, "device_ids": None}


def dist_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def rank_batch(train: dict) -> int:
    """The per-rank batch of ``train.batch_size``, the recipe's global batch (an error names the key and the fix)."""
    from transfer.configs import ConfigError

    try:
        return D.split_batch(int(train["batch_size"]), D.detect().world_size)
    except D.BatchSplitError as e:
        raise ConfigError(str(e)) from None


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
