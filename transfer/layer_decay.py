"""Layer-wise LR decay for mmengine runners (mmseg and mmdet) over the 4M encoder.

mmseg's ``LayerDecayOptimizerConstructor`` only knows MAE/BEiT/ConvNeXt parameter names, so this constructor hands the
grouping to :func:`transfer.adapter.layer_decay_param_groups`: the same rule the timm classification path uses, so
"layer decay 0.65" means the same thing in every transfer task. Use it in a config as::

    optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05),
                         constructor="FourMLayerDecayOptimizerConstructor",
                         paramwise_cfg=dict(layer_decay_rate=0.65))  # num_layers: the encoder depth, inferred if absent

It is registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``; mmseg's and mmdet's child registries fall back to
their parent, so it is found under either ``DefaultScope``.
"""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from transfer.adapter import NO_WEIGHT_DECAY, layer_decay_param_groups

PARAMWISE_KEYS = ("layer_decay_rate", "num_layers", "no_weight_decay")


def encoder_depth(model: nn.Module) -> int:
    """Number of encoder blocks of a model whose backbone is (or wraps) a FourMEncoder."""
    for candidate in (getattr(model, "backbone", None), model):
        if candidate is None:
            continue
        for mod in (candidate, getattr(candidate, "encoder_model", None)):
            blocks = getattr(mod, "encoder", None)
            if isinstance(blocks, nn.ModuleList):
                return len(blocks)
    raise ValueError(
        f"FourMLayerDecayOptimizerConstructor: cannot find the encoder blocks of {type(model).__name__} "
        "(expected model.backbone.encoder as a ModuleList); set paramwise_cfg.num_layers explicitly"
    )


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class FourMLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper whose param groups are lr * layer_decay_rate**(num_layers + 1 - layer_id), no decay on 1-D params.

    ``paramwise_cfg``: ``layer_decay_rate`` (required), ``num_layers`` (default: the encoder depth found on the model),
    ``no_weight_decay`` (name substrings without weight decay; default: position/modality embeddings and tokens).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown or "layer_decay_rate" not in paramwise_cfg:
            raise ValueError(
                f"FourMLayerDecayOptimizerConstructor: paramwise_cfg must hold layer_decay_rate (and optionally "
                f"num_layers, no_weight_decay); got keys {sorted(paramwise_cfg)}"
                + (f", unknown {unknown}" if unknown else "")
            )
        self.layer_decay_rate = float(paramwise_cfg["layer_decay_rate"])
        self.num_layers = paramwise_cfg.get("num_layers")
        self.no_weight_decay = tuple(paramwise_cfg.get("no_weight_decay", NO_WEIGHT_DECAY))
        # The parent validates the optimizer part; the paramwise options are ours, not its custom_keys/mults.
        super().__init__(optim_wrapper_cfg, paramwise_cfg=None)
        if self.base_lr is None or self.base_wd is None:
            raise ValueError("FourMLayerDecayOptimizerConstructor: optim_wrapper.optimizer needs lr and weight_decay")

    def __call__(self, model: nn.Module):
        from mmengine.optim import OptimWrapper  # noqa: F401  (registers the default wrapper types)
        from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS

        if hasattr(model, "module"):
            model = model.module
        num_layers = int(self.num_layers) if self.num_layers is not None else encoder_depth(model)
        groups = layer_decay_param_groups(model, self.base_lr, self.base_wd, self.layer_decay_rate, num_layers,
                                          no_weight_decay=self.no_weight_decay)
        optimizer_cfg = dict(self.optimizer_cfg)
        optimizer_cfg["params"] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
