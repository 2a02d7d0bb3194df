"""The 4M encoder and our dense heads as mmsegmentation modules (registered in ``mmseg.registry``).

* ``FourMBackbone``   the 4M encoder (via :func:`transfer.adapter.build_encoder`) returning four stride-16 maps from
                      blocks ``out_indices``; with ``tok_depth@224`` among its modalities the input carries depth as a
                      4th channel, which a frozen depth VQ-VAE turns into tokens for the encoder's own depth embedding.
* ``DepthDPTHead``    DPT (reassemble + fusion blocks) with a regression output, for ``DepthEstimator``.
* ``BerHuLoss``       reverse Huber loss on valid (gt > 0) pixels, as MultiMAE trains NYUv2 depth.
* ``AppendDepthChannel`` / ``NYUv2RGBDDataset``  RGB-D inputs: image (RGB order) + depth in metres as channel 4.
* ``SegCrossEntropyMetric`` / ``DepthLossMetric``  ``val_loss`` from the predictions the evaluator already gets.
* ``top1_accuracy``   the ``acc_seg`` every decode head logs each step, computed without a strided ``argmax``.

Importing this module registers everything; mmseg and mmdet must each be built under their own ``DefaultScope``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.transforms import BaseTransform
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModule
from mmseg.datasets import BaseSegDataset
from mmseg.evaluation.metrics import DepthMetric, IoUMetric
from mmseg.models.decode_heads import decode_head as _decode_head
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.decode_heads.dpt_head import FeatureFusionBlock, ReassembleBlocks
from mmseg.models.losses import accuracy as _mmseg_accuracy
from mmseg.registry import DATASETS, METRICS, MODELS, TRANSFORMS
from torch import nn

from fourm.modalities import spec
from fourm.modalities.codecs import decode_depth
from transfer.adapter import adapt_encoder, build_encoder

RGB = "rgb@224"
DEPTH_TOKENS = "tok_depth@224"
BASE_OUT_INDICES = (3, 5, 7, 11)  # the ViT-B blocks ViTDet/BEiT/MAE take for UperNet and DPT


def scaled_out_indices(depth: int, base: Sequence[int] = BASE_OUT_INDICES, base_depth: int = 12) -> list[int]:
    """Block indices at the same relative depths as ``base`` on a ``base_depth`` encoder (e.g. 3/5/7/11 of 12 -> 1/2/3/5 of 6)."""
    return [max(0, min(depth - 1, round((i + 1) * depth / base_depth) - 1)) for i in base]


# --- backbone ----------------------------------------------------------------------------------------------
@MODELS.register_module()
class FourMBackbone(BaseModule):
    """4M encoder as an mmseg backbone: ``forward(x) -> tuple of 4 maps [B, dim, H/16, W/16]`` (before the final norm).

    ``x`` is normalised RGB ``[B, 3, H, W]``; with ``tok_depth@224`` in ``modalities`` it is ``[B, 4, H, W]`` whose 4th
    channel is depth in metres (0 = missing), tokenised by the frozen VQ-VAE at ``depth_tokenizer``. The maps are the
    RGB tokens' outputs (the depth tokens inform them through attention), as MultiMAE's RGB-D heads read RGB tokens.
    ``out_indices`` picks blocks explicitly; otherwise ``base_out_indices`` (blocks of a 12-block encoder) are scaled
    to this encoder's depth.
    Extra input channels are dropped when the encoder has no depth embedding, so RGB-only and RGB-D runs share data.
    ``frozen`` keeps the encoder as loaded (no gradients, always in eval mode, so no drop path): linear probing.
    ``lora`` (rank, alpha, dropout, targets) freezes the encoder's weights and adds LoRA adapters (:mod:`transfer.lora`).
    """

    def __init__(self, init: str = "random", model: str = "fm_base_12e_12d_swiglu_nobias", modalities=(RGB,),
                 image_size: int = 224, drop_path_rate: float = 0.0, out_indices: Sequence[int] | None = None,
                 base_out_indices: Sequence[int] = BASE_OUT_INDICES, depth_tokenizer: str | None = None,
                 frozen: bool = False, lora: dict | None = None, init_cfg=None):
        super().__init__(init_cfg)
        modalities = list(modalities)
        if modalities[0] != RGB or not set(modalities) <= {RGB, DEPTH_TOKENS}:
            raise ValueError(f"FourMBackbone: modalities must be [{RGB!r}] or [{RGB!r}, {DEPTH_TOKENS!r}], got {modalities}")
        self.modalities = modalities
        self.encoder_model = build_encoder(init, model, modalities, image_size, drop_path_rate)
        self.frozen = bool(frozen)
        adapt_encoder(self.encoder_model, self.frozen, lora)
        self.dim = self.encoder_model.dim
        self.patch_size = self.encoder_model.patch_size
        depth = self.encoder_model.depth
        self.out_indices = list(out_indices) if out_indices is not None else scaled_out_indices(depth, base_out_indices)
        bad = [i for i in self.out_indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"FourMBackbone: out_indices {bad} outside the encoder's {depth} blocks")
        self.depth_tokenizer = None
        if DEPTH_TOKENS in modalities:
            if not depth_tokenizer:
                raise ValueError(f"FourMBackbone: {DEPTH_TOKENS} needs depth_tokenizer=<tokenizer.safetensors or its run folder>")
            from fourm.tokenizers.checkpoint import load_tokenizer

            tok = load_tokenizer(depth_tokenizer)
            if spec(tok.config.modality).token != DEPTH_TOKENS:
                raise ValueError(f"FourMBackbone: {depth_tokenizer} is a {tok.config.modality} tokenizer, not depth")
            for p in tok.parameters():
                p.requires_grad_(False)
            self.depth_tokenizer = tok.eval()

    def init_weights(self):
        # Weights come from build_encoder (a checkpoint or the model's own init) and the tokenizer file; mmengine's
        # recursive init must not touch them.
        self._is_init = True

    def train(self, mode: bool = True):
        super().train(mode)
        if self.depth_tokenizer is not None:
            self.depth_tokenizer.eval()  # frozen: its quantizer statistics must not move
        if self.frozen:
            self.encoder_model.eval()
        return self

    def depth_tokens(self, depth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Depth ``[B, 1, H, W]`` metres -> token ids on the RGB patch grid (nearest-resampled if strides differ)."""
        ids = self.depth_tokenizer.encode(depth)
        if tuple(ids.shape[1:]) != tuple(grid):
            ids = F.interpolate(ids[:, None].float(), size=grid, mode="nearest")[:, 0].long()
        return ids

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"FourMBackbone: input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        grid = (h // self.patch_size, w // self.patch_size)
        inputs = {RGB: x[:, :3]}
        if self.depth_tokenizer is not None:
            if x.shape[1] < 4:
                raise ValueError("FourMBackbone: RGB-D encoder got a 3-channel input; add AppendDepthChannel to the pipeline")
            inputs[DEPTH_TOKENS] = self.depth_tokens(x[:, 3:4], grid)
        wanted = sorted(set(self.out_indices))
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            _, feats, _ = self.encoder_model.forward_features(inputs, out_indices=wanted)
        by_index = dict(zip(wanted, feats))
        n_rgb = grid[0] * grid[1]
        return tuple(by_index[i][:, :n_rgb].transpose(1, 2).reshape(b, self.dim, *grid) for i in self.out_indices)


# --- the logged segmentation accuracy -------------------------------------------------------------------------
def top1_accuracy(pred: torch.Tensor, target: torch.Tensor, topk=1, thresh=None, ignore_index=None):
    """mmseg's ``accuracy`` (the ``acc_seg`` each decode head logs every step), the same value for top-1.

    mmseg takes ``topk`` over the channel axis of the ``[B, C, H, W]`` logits, a strided reduction: 12 ms of a
    single-threaded 112 px, 15-class step, twice a step (decode and auxiliary head), about 8% of an ADE20K run.
    ``max`` over the same axis takes 2.6 ms. It only feeds the log, so training is unchanged to the bit.
    Other ``topk``/``thresh`` go to mmseg's own.
    """
    if topk != 1 or thresh is not None or pred.size(0) == 0 or pred.ndim != target.ndim + 1:
        return _mmseg_accuracy(pred, target, topk=topk, thresh=thresh, ignore_index=ignore_index)
    with torch.no_grad():
        correct = pred.detach().max(1).indices == target
        valid = target != ignore_index if ignore_index is not None else torch.ones_like(correct)
        eps = torch.finfo(torch.float32).eps
        correct_k = (correct & valid).reshape(-1).float().sum(0, keepdim=True) + eps
        return correct_k.mul_(100.0 / (int(valid.sum()) + eps))


# decode_head.py calls the name it imported; every decode head (UPerHead, FCNHead, ...) goes through it
_decode_head.accuracy = top1_accuracy


# --- depth head and loss ---------------------------------------------------------------------------------------
@MODELS.register_module()
class BerHuLoss(nn.Module):
    """Reverse Huber: |e| below c, (e^2 + c^2) / 2c above, c = ``threshold`` * max|e| of the batch; valid = target > eps."""

    def __init__(self, threshold: float = 0.2, eps: float = 1e-3, loss_weight: float = 1.0, loss_name: str = "loss_berhu"):
        super().__init__()
        self.threshold, self.eps, self.loss_weight, self._loss_name = threshold, eps, loss_weight, loss_name

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **_) -> torch.Tensor:
        valid = target > self.eps
        if not valid.any():
            return pred.sum() * 0.0  # keeps the graph: a batch of only-invalid crops contributes nothing
        err = (pred - target)[valid].abs()
        c = (self.threshold * err.max()).detach().clamp(min=1e-6)
        loss = torch.where(err <= c, err, (err**2 + c**2) / (2 * c))
        return self.loss_weight * loss.mean()

    @property
    def loss_name(self) -> str:
        return self._loss_name


def _resize_layer(channels: int, factor: float) -> nn.Module:
    """DPT's reassemble resampling by ``factor``: a strided transposed conv up, identity, a strided conv down.

    Factors 4, 2, 1 and 0.5 build mmseg's layers exactly; 0.25 is a 7x7 conv of stride 4 (every pixel seen)."""
    stride = round(1 / factor) if factor < 1 else 1
    if (factor >= 1 and factor != int(factor)) or stride & (stride - 1) or (factor < 1 and abs(stride * factor - 1) > 1e-9):
        raise ValueError(f"DepthDPTHead: rescale {factor} must be an integer >= 1 or 1/2^k")
    if factor < 1:
        return nn.Conv2d(channels, channels, 2 * stride - 1, stride=stride, padding=stride - 1)
    return nn.Identity() if factor == 1 else nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor))


@MODELS.register_module()
class DepthDPTHead(BaseDecodeHead):
    """DPT for metric depth: reassemble 4 stride-16 maps to strides 4/8/16/32, fuse bottom-up, regress one channel.

    ``rescales`` resamples the four maps (DPT's 4/2/1/0.5 for patch 16); with patch 8 the same strides are
    2/1/0.5/0.25, else every level, and the head's output, is at twice the resolution (four times the convs).

    mmseg's ``DPTHead`` ends in a classifier; this ends in DPT's depth head (conv, 2x up, conv, ReLU, 1x1 conv) and a
    positive activation: ``sigmoid * max_depth`` (bounded, as mmseg's VPD depth head) or ``relu``/``softplus``.
    Input: the backbone's tuple (no neck). Output: depth in the unit of the targets (metres), full input resolution.
    """

    def __init__(self, embed_dims: int, post_process_channels=(96, 192, 384, 768), channels: int = 256,
                 patch_size: int = 16, max_depth: float = 10.0, activation: str = "sigmoid",
                 act_cfg=dict(type="ReLU"), fusion_norm_cfg=None, loss_decode=dict(type="BerHuLoss"),
                 rescales=(4, 2, 1, 0.5), **kwargs):
        if activation not in ("sigmoid", "relu", "softplus"):
            raise ValueError(f"DepthDPTHead: activation must be sigmoid, relu or softplus, got {activation!r}")
        super().__init__(in_channels=[embed_dims] * 4, channels=channels, num_classes=1, out_channels=1, threshold=0.0,
                         in_index=[0, 1, 2, 3], input_transform="multiple_select", dropout_ratio=0.0,
                         loss_decode=loss_decode, init_cfg=dict(type="TruncNormal", std=0.02, layer=["Conv2d"]), **kwargs)
        self.max_depth, self.activation = max_depth, activation
        self.reassemble_blocks = ReassembleBlocks(embed_dims, list(post_process_channels), "ignore", patch_size)
        if tuple(rescales) != (4, 2, 1, 0.5):  # mmseg's layers are DPT's for patch 16 (strides 4/8/16/32)
            self.reassemble_blocks.resize_layers = nn.ModuleList(
                _resize_layer(c, f) for c, f in zip(post_process_channels, rescales, strict=True))
        self.convs = nn.ModuleList(ConvModule(c, channels, 3, padding=1, act_cfg=None, bias=False) for c in post_process_channels)
        self.fusion_blocks = nn.ModuleList(FeatureFusionBlock(channels, act_cfg, fusion_norm_cfg) for _ in post_process_channels)
        self.fusion_blocks[0].res_conv_unit1 = None  # the coarsest block has nothing to fuse
        self.depth_head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 1),
        )
        self.conv_seg = None  # replaced by depth_head

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        x = self.reassemble_blocks([[f, None] for f in x])
        x = [conv(f) for conv, f in zip(self.convs, x)]
        out = self.fusion_blocks[0](x[-1])
        for i in range(1, len(self.fusion_blocks)):
            skip = x[-(i + 1)]
            if out.shape[-2:] != skip.shape[-2:]:  # a coarsest level rounded up (7 -> 4 -> 8): back onto the finer grid
                out = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=self.align_corners)
            out = self.fusion_blocks[i](out, skip)
        out = self.depth_head(out)
        if self.activation == "sigmoid":
            return torch.sigmoid(out) * self.max_depth
        return F.relu(out) if self.activation == "relu" else F.softplus(out)

    def _stack_batch_gt(self, batch_data_samples):
        return torch.stack([s.gt_depth_map.data for s in batch_data_samples], dim=0)

    def loss_by_feat(self, pred: torch.Tensor, batch_data_samples) -> dict:
        gt = self._stack_batch_gt(batch_data_samples)
        pred = F.interpolate(pred, size=gt.shape[2:], mode="bilinear", align_corners=self.align_corners)
        losses = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        out: dict = {}
        for loss in losses:
            out[loss.loss_name] = out.get(loss.loss_name, 0) + loss(pred, gt)
        return out


# --- RGB-D data ------------------------------------------------------------------------------------------------
@DATASETS.register_module()
class NYUv2RGBDDataset(BaseSegDataset):
    """NYUv2 semantic segmentation with depth: ``images/<split>/*.jpg``, ``semseg/<split>/*.png`` (0 = ignore,
    reduce_zero_label), ``annotations/<split>/*.png`` (16-bit depth, mm); each sample gets ``depth_map_path``."""

    def __init__(self, data_prefix=dict(img_path="images/train", seg_map_path="semseg/train",
                                        depth_map_path="annotations/train"),
                 img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=True, **kwargs):
        super().__init__(data_prefix=data_prefix, img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)

    def load_data_list(self) -> list[dict]:
        data_list = super().load_data_list()
        depth_dir = self.data_prefix.get("depth_map_path")
        for info in data_list:
            stem = Path(info["img_path"]).name[: -len(self.img_suffix)]
            info["depth_map_path"] = str(Path(depth_dir) / f"{stem}.png") if depth_dir else None
        return data_list


@TRANSFORMS.register_module()
class AppendDepthChannel(BaseTransform):
    """Image (BGR as loaded) -> float32 ``H x W x 4``: RGB then depth in metres from ``depth_map_path`` (0 = missing).

    Put it after photometric transforms (they need 3 channels) and before geometric ones (which then move depth with
    the pixels). The data preprocessor must not swap channels (``bgr_to_rgb=False``): they are already RGB.
    """

    def transform(self, results: dict) -> dict:
        path = results.get("depth_map_path")
        if not path or not Path(path).exists():
            raise FileNotFoundError(f"AppendDepthChannel: depth map {path!r} for {results.get('img_path')} is missing")
        depth = decode_depth(Path(path))
        img = results["img"]
        if depth.shape != img.shape[:2]:
            raise ValueError(f"AppendDepthChannel: depth {depth.shape} and image {img.shape[:2]} differ for {path}")
        results["img"] = np.concatenate([img[..., ::-1].astype(np.float32), depth[..., None]], axis=-1)
        return results


# --- per-sample results (fourm.per_sample: bootstrap intervals and paired comparisons) ----------------------------
@METRICS.register_module()
class PerSampleIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric``, whose per-image intersections and unions also go to ``<out_dir>/per_sample.npz`` and
    whose metrics gain ``mIoU.ci95`` (the half-width of the 95% bootstrap interval over the test images)."""

    def __init__(self, out_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if self.out_dir and results:
            from fourm.per_sample import write_per_sample

            inter = np.stack([np.asarray(r[0], dtype=np.float64) for r in results])
            union = np.stack([np.asarray(r[1], dtype=np.float64) for r in results])
            metrics.update(write_per_sample(self.out_dir, {"intersect": inter, "union": union},
                                            {"mIoU": {"kind": "ratio", "num": "intersect", "den": "union", "scale": 100.0}}))
        return metrics


@METRICS.register_module()
class PerSampleDepthMetric(DepthMetric):
    """mmseg's ``DepthMetric`` (a mean of per-image values), whose per-image values also go to
    ``<out_dir>/per_sample.npz`` under our names, with ``delta1.ci95``, ``abs_rel.ci95`` and ``rmse.ci95``."""

    NAMES = {"d1": "delta1", "abs_rel": "abs_rel", "rmse": "rmse"}

    def __init__(self, out_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if self.out_dir and results:
            from fourm.per_sample import write_per_sample

            per_image = [self._calc_all_metrics(gt, pred) for gt, pred in results]
            arrays = {ours: np.array([float(m[theirs]) for m in per_image]) for theirs, ours in self.NAMES.items()}
            cis = write_per_sample(self.out_dir, arrays, {k: {"kind": "mean", "values": k} for k in arrays})
            metrics.update({f"{theirs}.ci95": cis[f"{ours}.ci95"] for theirs, ours in self.NAMES.items()})
        return metrics


# --- val_loss metrics --------------------------------------------------------------------------------------------
@METRICS.register_module()
class SegCrossEntropyMetric(BaseMetric):
    """``val_loss``: pixel-mean cross-entropy of the predicted logits against the labels (ignore_index skipped)."""

    def __init__(self, ignore_index: int = 255, collect_device: str = "cpu", prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples) -> None:
        for s in data_samples:
            logits = s["seg_logits"]["data"].float()
            label = s["gt_sem_seg"]["data"].squeeze(0).to(logits.device).long()
            valid = label != self.ignore_index
            if logits.shape[0] == 1:  # binary heads (out_channels=1) keep one logit
                logits = torch.cat([torch.zeros_like(logits), logits])
            ce = F.cross_entropy(logits[None], label[None], ignore_index=self.ignore_index, reduction="sum")
            self.results.append((float(ce), int(valid.sum())))

    def compute_metrics(self, results) -> dict:
        total = sum(n for _, n in results)
        return {"val_loss": sum(c for c, _ in results) / max(total, 1)}


@METRICS.register_module()
class DepthLossMetric(BaseMetric):
    """``val_loss``: the training loss (``loss`` config, BerHu by default) of each predicted depth map, image mean."""

    def __init__(self, loss=dict(type="BerHuLoss"), collect_device: str = "cpu", prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.loss = MODELS.build(loss)

    def process(self, data_batch, data_samples) -> None:
        for s in data_samples:
            pred = s["pred_depth_map"]["data"].float()
            gt = s["gt_depth_map"]["data"].float().to(pred.device)
            value = float(self.loss(pred.reshape(1, 1, *pred.shape[-2:]), gt.reshape(1, 1, *gt.shape[-2:])))
            if math.isfinite(value):
                self.results.append(value)

    def compute_metrics(self, results) -> dict:
        return {"val_loss": sum(results) / max(len(results), 1)}
