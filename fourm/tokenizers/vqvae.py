"""Spatial VQ-VAE tokenizers for image-like modalities (rgb, depth, normal, semseg, edges, feature maps).

A conv encoder downsamples by ``2 ** len(channels)`` (224 px with 4 stages -> 14x14 tokens, the 4M grid of patch 16;
64 px with 3 stages -> 8x8), a :class:`~fourm.tokenizers.quantizer.VectorQuantizer` turns each cell into one token id,
and a conv decoder maps the codes back to the modality.

Each modality has an adapter that defines the network input, the loss and the decoded output ("modality tensor"):

=======  ==============================  ===================================  ====================================
name     modality tensor                 network input                        loss
=======  ==============================  ===================================  ====================================
rgb      float [B,3,H,W] in [0,1]        pixels scaled to [-1,1]              MSE on the [-1,1] pixels
depth    float [B,1,H,W] metres, 0=none  log-depth mapped from                L1 on normalised log-depth,
                                         [depth_min, depth_max] to [-1,1]     valid (depth > 0) pixels only
normal   float [B,3,H,W] unit vectors    the vectors (zeros where missing)    L1 + (1 - cosine), valid pixels
semseg   long [B,H,W] class ids          one-hot over num_classes (the        cross-entropy (ignore_index, and
                                         ignore_index -> all zeros)           ids >= num_classes, are ignored)
edge     float [B,1,H,W] in {0, 1}       the map scaled to [-1,1]             class-balanced binary cross-entropy
                                                                              (``canny_edge``, ``sam_edge``)
mask     float [B,1,H,W] in {0, 1}       the mask scaled to [-1,1]            binary cross-entropy (``sam_mask``:
         (an instance in its box)                                             16 tokens at 32 px, 3 stages)
feature  float [B,C,h,w] (a ViT's        the features                         MSE + (1 - cosine) over channels
         patch-token map)                                                     (DINOv2/ImageBind/CLIP maps:
                                                                              ``feature_dim`` = C)
=======  ==============================  ===================================  ====================================

Depth is normalised with *fixed* log bounds rather than per image, so decoded tokens give metric depth back.
A feature map is already on its token grid (16 x 16 for a patch-14 ViT at 224 px): ``downsample_stages=0`` keeps
the resolution through every stage.
"""
from __future__ import annotations

import abc
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fourm.modalities import has_spec, spec, specs
from fourm.tokenizers.quantizer import VectorQuantizer

IGNORE_INDEX = 255


def adapter_kind(modality: str, feature_dim: int = 0) -> str:
    """The adapter of a modality, as its spec names it (``rgb``, ``depth``, ``normal``, ``semseg``, ``edge``, ``mask``,
    ``feature``); a modality without one is an error naming those that have one."""
    s = spec(modality) if has_spec(modality) else None
    if s is None or s.tokenizer is None:
        have = sorted(n for n, x in specs().items() if x.tokenizer)
        raise ValueError(f"no tokenizer for modality {modality!r}: use one of {have}, or a feature-map folder "
                         "(feat_<name>, or one registered with fourm.modalities.specs.feature_map) with feature_dim=<channels>")
    if s.tokenizer not in ADAPTERS:
        raise ValueError(f"modality {modality!r}: its spec names the tokenizer adapter {s.tokenizer!r}; adapters: {sorted(ADAPTERS)}")
    return s.tokenizer


@dataclasses.dataclass
class VQVAEConfig:
    """Everything needed to rebuild a tokenizer (stored in the checkpoint's ``__metadata__``)."""

    modality: str = "depth"  # rgb | depth | normal | semseg
    token_modality: str = "tok_depth@224"  # the 4M modality name its tokens are stored under
    image_size: int = 64
    channels: tuple = (32, 64, 128)  # one entry per 2x downsampling stage
    num_res_blocks: int = 1
    code_dim: int = 32
    codebook_size: int = 512
    beta: float = 0.25
    ema_decay: float | None = None  # None: learned codebook; float: EMA codebook
    restart_after: int = 50
    num_classes: int = 0  # semseg only
    ignore_index: int = IGNORE_INDEX  # semseg label that is neither input nor loss (world: 0 = void)
    depth_min: float = 0.1  # metres; log-depth normalisation bounds
    depth_max: float = 100.0
    feature_dim: int = 0  # feature maps only: their channels
    downsample_stages: int | None = None  # how many of the stages halve the resolution (None: all)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.kind = adapter_kind(self.modality, self.feature_dim)
        if self.downsample_stages is not None and not 0 <= self.downsample_stages <= len(self.channels):
            raise ValueError(f"VQVAEConfig.downsample_stages={self.downsample_stages}: use 0..{len(self.channels)}")
        if not self.channels:
            raise ValueError("VQVAEConfig.channels needs at least one stage")
        if self.image_size % self.downsample:
            raise ValueError(
                f"VQVAEConfig.image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample} (2 ** len(channels)); change image_size or channels"
            )
        ADAPTERS[self.kind].check(self)

    @property
    def downsample(self) -> int:
        return 2 ** self.stride_stages

    @property
    def stride_stages(self) -> int:
        return len(self.channels) if self.downsample_stages is None else self.downsample_stages

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # ``kind`` is derived, not a field

    @classmethod
    def from_dict(cls, d: dict) -> "VQVAEConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown VQVAEConfig keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**d)


# --- modality adapters ---------------------------------------------------------------------------------
class ModalityAdapter(abc.ABC):
    """How one modality enters and leaves the network. Subclasses set ``in_channels`` / ``out_channels``."""

    in_channels: int
    out_channels: int

    def __init__(self, config: VQVAEConfig):
        self.config = config

    @staticmethod
    def check(config) -> None:
        """Refuse a config this adapter cannot build (one line naming the key)."""

    @abc.abstractmethod
    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Modality tensor -> network input."""

    @abc.abstractmethod
    def loss(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss of the decoder output against the modality tensor."""

    @abc.abstractmethod
    def from_output(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> modality tensor."""


class RGBAdapter(ModalityAdapter):
    in_channels = out_channels = 3

    def to_input(self, x):
        return x.float() * 2 - 1

    def loss(self, out, x):
        return F.mse_loss(out, self.to_input(x))

    def from_output(self, out):
        return ((out + 1) / 2).clamp(0, 1)


class DepthAdapter(ModalityAdapter):
    in_channels = out_channels = 1

    @staticmethod
    def check(config) -> None:
        if not 0 < config.depth_min < config.depth_max:
            raise ValueError(f"VQVAEConfig needs 0 < depth_min < depth_max, got {config.depth_min}, {config.depth_max}")

    def _bounds(self):
        return math.log(self.config.depth_min), math.log(self.config.depth_max)

    def to_input(self, x):
        lo, hi = self._bounds()
        logd = torch.log(x.float().clamp(self.config.depth_min, self.config.depth_max))
        z = (logd - lo) / (hi - lo) * 2 - 1
        return torch.where(x > 0, z, torch.zeros_like(z))  # invalid pixels sit at the mid value

    def loss(self, out, x):
        valid = (x > 0).float()
        return ((out - self.to_input(x)).abs() * valid).sum() / valid.sum().clamp_min(1)

    def from_output(self, out):
        lo, hi = self._bounds()
        return torch.exp((out.clamp(-1, 1) + 1) / 2 * (hi - lo) + lo)


class NormalAdapter(ModalityAdapter):
    in_channels = out_channels = 3

    def to_input(self, x):
        return x.float()

    def loss(self, out, x):
        valid = (x.abs().sum(1, keepdim=True) > 0).float()
        denom = valid.sum().clamp_min(1)
        l1 = ((out - x).abs() * valid).sum() / (denom * 3)
        cos = F.cosine_similarity(out, x, dim=1, eps=1e-6).unsqueeze(1)
        return l1 + ((1 - cos) * valid).sum() / denom

    def from_output(self, out):
        return F.normalize(out, dim=1, eps=1e-6)


class SemsegAdapter(ModalityAdapter):
    @staticmethod
    def check(config) -> None:
        if config.num_classes < 2:
            raise ValueError("VQVAEConfig.num_classes must be set (>= 2) for a semseg tokenizer")

    def __init__(self, config):
        super().__init__(config)
        self.in_channels = self.out_channels = config.num_classes

    def to_input(self, x):
        x = x.long()
        valid = (x != self.config.ignore_index) & (x >= 0) & (x < self.config.num_classes)
        onehot = F.one_hot(torch.where(valid, x, torch.zeros_like(x)), self.config.num_classes)
        onehot = onehot * valid.unsqueeze(-1)
        return onehot.permute(0, 3, 1, 2).float()

    def loss(self, out, x):
        x = x.long()
        x = torch.where((x >= 0) & (x < self.config.num_classes), x, torch.full_like(x, self.config.ignore_index))
        return F.cross_entropy(out, x, ignore_index=self.config.ignore_index)

    def from_output(self, out):
        if 0 <= self.config.ignore_index < self.config.num_classes:
            # the ignored id gets no gradient, so its logit is meaningless: never predict it
            out = out.clone()
            out[:, self.config.ignore_index] = float("-inf")
        return out.argmax(1)


class EdgeAdapter(ModalityAdapter):
    in_channels = out_channels = 1

    def to_input(self, x):
        return x.float() * 2 - 1

    def loss(self, out, x):
        # class-balanced (HED): edges are a few percent of the pixels, and unweighted BCE learns to predict none
        x = x.float()
        pos = x.sum().clamp_min(1)
        return F.binary_cross_entropy_with_logits(out, x, pos_weight=(x.numel() - pos) / pos) * pos / x.numel() * 2

    def from_output(self, out):
        return (out > 0).float()


class MaskAdapter(EdgeAdapter):
    """An instance mask in its box: about as much inside as outside, so plain binary cross-entropy."""

    def loss(self, out, x):
        return F.binary_cross_entropy_with_logits(out, x.float())


class FeatureAdapter(ModalityAdapter):
    @staticmethod
    def check(config) -> None:
        if config.feature_dim <= 0:
            raise ValueError(f"VQVAEConfig.feature_dim must be set to the channels of the {config.modality!r} feature maps")

    def __init__(self, config):
        super().__init__(config)
        self.in_channels = self.out_channels = config.feature_dim

    def to_input(self, x):
        return x.float()

    def loss(self, out, x):
        x = x.float()
        return F.mse_loss(out, x) + (1 - F.cosine_similarity(out, x, dim=1, eps=1e-6)).mean()

    def from_output(self, out):
        return out


ADAPTERS = {"rgb": RGBAdapter, "depth": DepthAdapter, "normal": NormalAdapter, "semseg": SemsegAdapter,
            "edge": EdgeAdapter, "mask": MaskAdapter, "feature": FeatureAdapter}


# --- network -------------------------------------------------------------------------------------------
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Stem conv at full resolution, then per stage a stride-2 conv followed by ``num_res_blocks`` ResBlocks.

    Residual blocks run only at the downsampled resolutions: full-resolution blocks cost most of the compute
    and buy little for the smooth, piecewise modalities tokenized here.
    """

    def __init__(self, in_channels: int, channels: tuple, num_res_blocks: int, code_dim: int, stride_stages: int | None = None):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        layers, c = [], channels[0]
        strided = len(channels) if stride_stages is None else stride_stages
        for i, cout in enumerate(channels):
            down = i < strided
            layers.append(nn.Conv2d(c, cout, 4, stride=2, padding=1) if down else nn.Conv2d(c, cout, 3, padding=1))
            c = cout
            layers += [ResBlock(c, c) for _ in range(num_res_blocks)]
        layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, code_dim, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(self.stem(x))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: per stage ResBlocks then nearest 2x upsampling + conv; a 3x3 conv to the output."""

    def __init__(self, out_channels: int, channels: tuple, num_res_blocks: int, code_dim: int, stride_stages: int | None = None):
        super().__init__()
        rev = tuple(reversed(channels))
        c = rev[0]
        layers = [nn.Conv2d(code_dim, c, 3, padding=1)]
        strided = len(channels) if stride_stages is None else stride_stages
        for i, cout in enumerate((*rev[1:], channels[0])):
            layers += [ResBlock(c, c) for _ in range(num_res_blocks)]
            if len(channels) - 1 - i < strided:  # mirrors the encoder's i-th from last stage
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(nn.Conv2d(c, cout, 3, padding=1))
            c = cout
        layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z):
        return self.body(z)


class VQVAE(nn.Module):
    """A spatial VQ-VAE tokenizer for one modality; ``encode`` gives ``[B, h, w]`` token ids, ``decode`` inverts it."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.adapter = ADAPTERS[config.kind](config)
        c = config
        self.encoder = Encoder(self.adapter.in_channels, c.channels, c.num_res_blocks, c.code_dim, c.downsample_stages)
        self.quantizer = VectorQuantizer(
            c.codebook_size, c.code_dim, beta=c.beta, ema_decay=c.ema_decay, restart_after=c.restart_after
        )
        self.decoder = Decoder(self.adapter.out_channels, c.channels, c.num_res_blocks, c.code_dim, c.downsample_stages)
        # channels-last conv weights make oneDNN run every conv in NHWC: single-threaded at 112 px (measured), a
        # semseg training step is 17% faster and encoding 39%. The values are the same up to float rounding;
        # checkpoints store contiguous tensors either way
        self.to(memory_format=torch.channels_last)

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def _check_input(self, x: torch.Tensor) -> None:
        size = tuple(x.shape[-2:])
        if size[0] % self.config.downsample or size[1] % self.config.downsample:
            raise ValueError(
                f"{self.config.modality} tokenizer: input {size} is not divisible by {self.config.downsample}; "
                f"resize to a multiple (trained at {self.config.image_size})"
            )

    def forward(self, x: torch.Tensor) -> dict:
        """Training pass on a modality tensor: reconstruction + quantizer losses, tokens and codebook stats."""
        self._check_input(x)
        z = self.encoder(self.adapter.to_input(x))
        z_q, tokens, q_loss, stats = self.quantizer(z)
        out = self.decoder(z_q)
        recon = self.adapter.loss(out, x)
        return {"loss": recon + q_loss, "recon_loss": recon, "vq_loss": q_loss, "tokens": tokens, "out": out, **stats}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Modality tensor -> token ids ``LongTensor [B, h, w]`` in ``[0, vocab_size)``."""
        self._check_input(x)
        z = self.encoder(self.adapter.to_input(x))
        b, d, h, w = z.shape
        return self.quantizer.lookup(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> modality tensor (see the module table)."""
        if tokens.dim() != 3:
            raise ValueError(f"decode expects token ids of shape [B, h, w], got {tuple(tokens.shape)}")
        return self.adapter.from_output(self.decoder(self.quantizer.embed(tokens)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
