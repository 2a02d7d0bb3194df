"""The official 4M tokenizers: ``VQVAE`` (ViT or MLP encoder and decoder) and ``DiVAE`` (ViT encoder, patched-UNet
diffusion decoder), loaded from the released safetensors with the official method names.

    tok = load_tokenizer("/weights/4M_tokenizers_depth_8k_224-448.safetensors")     # or a Hugging Face id, from the cache
    ids = tok.tokenize(tokenizer_input("depth", raw_depth))                           # [B, 14, 14] at 224 px
    depth = tok.decode_tokens(ids, timesteps=25, generator=torch.Generator().manual_seed(0), image_size=224)

The config is the file's ``__metadata__`` (each value ``str(value)``, read back as YAML; extra training keys are
ignored); weights load strictly. ``build_tokenizer(config)`` builds one without weights (also under
``torch.device("meta")``). Sizes are named in :mod:`fourm.tokenizers.vq_nets` (``register_architecture``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fourm.tokenizers import diffusion
from fourm.tokenizers.vq_nets import build_decoder, build_encoder, decoder_width, encoder_width
from fourm.tokenizers.vq_quantizers import CosineQuantizer, Memcodes


class TokenizerError(ValueError):
    """A file, config or input an official tokenizer cannot take; the message names it and the fix."""


# constructor keys of the official classes (anything else in a file's metadata is a training key, ignored)
VQVAE_KEYS = {"image_size": 256, "image_size_enc": None, "image_size_dec": None, "patch_size": 16, "patch_size_dec": None,
              "n_channels": 3, "n_labels": None, "enc_type": "vit_b_enc", "dec_type": "vit_b_dec", "patch_proj": True,
              "post_mlp": False, "out_conv": False, "quant_type": "lucid", "codebook_size": 16384, "num_codebooks": 1,
              "latent_dim": 32, "norm_codes": True, "norm_latents": False}
DIVAE_KEYS = {**{k: v for k, v in VQVAE_KEYS.items() if k not in ("dec_type", "out_conv", "patch_size_dec")},
              "dec_type": "unet_patched", "scheduler": "ddpm", "num_train_timesteps": 1000, "beta_schedule": "linear",
              "prediction_type": "sample", "thresholding": True, "clip_sample": False, "zero_terminal_snr": True,
              "conditioning": "concat"}


class _VQ(nn.Module):
    """What both classes share: the encoder, ``quant_proj`` and the quantizer (the official ``VQ``)."""

    KEYS: dict = VQVAE_KEYS

    def __init__(self, config: dict):
        super().__init__()
        self.config = c = {**self.KEYS, **{k: v for k, v in config.items() if k in self.KEYS}}
        enc_size = c["image_size_enc"] or c["image_size"]
        if c["n_labels"]:  # semseg: ids are embedded to n_channels before the encoder
            self.cls_emb = nn.Embedding(c["n_labels"], c["n_channels"])
        self.encoder = build_encoder(c["enc_type"], c["n_channels"], None, c["patch_size"], enc_size, c["patch_proj"],
                                     c["post_mlp"])
        self.quant_proj = nn.Conv2d(encoder_width(c["enc_type"]), c["latent_dim"], 1)
        if c["quant_type"] == "lucid":
            if c["num_codebooks"] != 1:
                raise TokenizerError(f"quant_type lucid with num_codebooks {c['num_codebooks']} is not supported (1 only)")
            self.quantize = CosineQuantizer(c["latent_dim"], c["codebook_size"])
        elif c["quant_type"] == "memcodes":
            self.quantize = Memcodes(c["latent_dim"], c["codebook_size"], c["num_codebooks"])
        else:
            raise TokenizerError(f"quant_type {c['quant_type']!r}: this loader knows lucid and memcodes")

    # --- the official API --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config["codebook_size"]

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.config["n_labels"]:
            if x.dtype not in (torch.int64, torch.int32, torch.uint8) or x.dim() != 3:
                raise TokenizerError(f"this tokenizer takes class ids [B, H, W] (integers, shifted by one: "
                                     f"tokenizer_input('semseg', ...)); got {x.dtype} {list(x.shape)}")
            return self.cls_emb(x.long()).permute(0, 3, 1, 2)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if c["n_labels"]:
            return
        if x.dim() != 4 or x.shape[1] != c["n_channels"]:
            raise TokenizerError(f"this tokenizer takes [B, {c['n_channels']}, H, W] inputs; got {list(x.shape)} "
                                 "(see fourm.tokenizers.tokenizer_input for each kind's transform)")
        p = c["patch_size"] if c["patch_proj"] else 1
        if x.shape[-1] % p or x.shape[-2] % p:
            raise TokenizerError(f"input size {list(x.shape[-2:])} is not a multiple of the patch size {p}")

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-quantization latents ``quant_proj(encoder(prepare_input(x)))``."""
        self._check_input(x)
        h = self.encoder(self.prepare_input(x))
        return self.quant_proj(h)

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids: ``[B, h, w]`` (lucid) or ``[B, num_codebooks, h, w]`` (memcodes)."""
        return self.quantize.tokenize(self.encode_latents(x))

    def tokens_to_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise TokenizerError(f"token ids must be in [0, {self.vocab_size}); got {int(ids.min())}..{int(ids.max())}")
        if isinstance(self.quantize, Memcodes) and ids.dim() == 2:  # a flat sequence of 16 global tokens
            ids = ids[..., None, None]
        return self.quantize.embed(ids.long())

    def encode(self, x: torch.Tensor):
        """(quantized embedding, ids) as the official ``encode`` returns its quant and tokens."""
        ids = self.tokenize(x)
        return self.tokens_to_embedding(ids), ids


class VQVAE(_VQ):
    """ViT (or MLP) encoder -> quantizer -> ``post_quant_proj`` -> ViT (or MLP) decoder."""

    KEYS = VQVAE_KEYS

    def __init__(self, config: dict):
        super().__init__(config)
        c = self.config
        out_channels = c["n_labels"] or c["n_channels"]
        self.post_quant_proj = nn.Conv2d(c["latent_dim"], decoder_width(c["dec_type"]), 1)
        self.decoder = build_decoder(c["dec_type"], decoder_width(c["dec_type"]), out_channels,
                                     c["patch_size_dec"] or c["patch_size"], c["image_size_dec"] or c["image_size"],
                                     c["patch_proj"], c["post_mlp"], c["out_conv"])

    def decode_quant(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_proj(quant))

    @torch.no_grad()
    def decode_tokens(self, ids: torch.Tensor, **_) -> torch.Tensor:
        """The raw decoder output (semseg: logits over ``n_labels``; features; embeddings ``[B, C, 1, 1]``)."""
        return self.decode_quant(self.tokens_to_embedding(ids))


class DiVAE(_VQ):
    """ViT encoder -> quantizer; a patched UNet denoises an image conditioned on the quantized embedding."""

    KEYS = DIVAE_KEYS

    def __init__(self, config: dict):
        super().__init__(config)
        from fourm.tokenizers.unet import build_unet

        c = self.config
        if c["conditioning"] != "concat":
            raise TokenizerError(f"conditioning {c['conditioning']!r}: this loader knows 'concat'")
        self.decoder = build_unet(c["dec_type"], in_channels=c["n_channels"], out_channels=c["n_channels"],
                                  cond_channels=c["latent_dim"])
        self.schedule = diffusion.NoiseSchedule(c["num_train_timesteps"], c["beta_schedule"], c["zero_terminal_snr"])
        if c["prediction_type"] not in ("sample", "epsilon", "v_prediction"):
            raise TokenizerError(f"prediction_type {c['prediction_type']!r}: sample, epsilon or v_prediction")

    @torch.no_grad()
    def decode_tokens(self, ids: torch.Tensor, timesteps: int = 50, generator: torch.Generator | None = None,
                      image_size: int | None = None, scheduler: str | None = None, verbose: bool = False) -> torch.Tensor:
        """Denoise from pure noise in ``timesteps`` steps; ``scheduler`` None = the model's own pipeline (``ddpm``
        for the releases: leading spacing, fresh noise each step), ``"ddim"`` = the trailing-spacing DDIM of the
        official training evaluation, ``"ddpm"``. The output lies in [-1, 1]."""
        quant = self.tokens_to_embedding(ids)
        return self.decode_quant(quant, timesteps, generator, image_size, scheduler)

    def decode_quant(self, quant, timesteps=50, generator=None, image_size=None, scheduler=None):
        c = self.config
        size = image_size or c["image_size"]
        kind = scheduler or c["scheduler"]
        shape = (quant.shape[0], c["n_channels"], size, size)
        return diffusion.sample(lambda x, t: self.decoder(x, t, quant).float(), shape, self.schedule, kind, timesteps,
                                generator, c["prediction_type"], thresholding=c["thresholding"] or c["clip_sample"],
                                device=quant.device)


CLASSES = {"VQVAE": VQVAE, "DiVAE": DiVAE}


def _parse_metadata(meta: dict) -> dict:
    """Official ``str(value)`` metadata -> values (YAML, with ``None`` as null)."""
    import yaml

    out = {}
    for k, v in meta.items():
        try:
            out[k] = yaml.safe_load(str(v).replace("None", "null"))
        except yaml.YAMLError:
            out[k] = v
    return out


def tokenizer_class(config: dict) -> type[_VQ]:
    """DiVAE when the config has a diffusion decoder (its ``dec_type`` is a patched UNet), else VQVAE."""
    dec = str(config.get("dec_type", ""))
    return DiVAE if dec.startswith("unet") or "scheduler" in config else VQVAE


def build_tokenizer(config: dict) -> _VQ:
    """An official tokenizer from its config, without weights (random init; works under ``torch.device("meta")``)."""
    try:
        return tokenizer_class(config)(config)
    except KeyError as e:
        raise TokenizerError(str(e.args[0])) from None


# the training script's argument names, which a file's metadata may carry instead of the constructor's (the official
# loader renames them the same way)
TRAINING_NAMES = {"quantizer_type": "quant_type", "encoder_type": "enc_type", "decoder_type": "dec_type",
                  "input_size_max": "image_size", "mask_size": "image_size"}


def is_official(meta: dict) -> bool:
    keys = {TRAINING_NAMES.get(k, k) for k in meta}
    return "enc_type" in keys and "quant_type" in keys


def config_from_file(meta: dict, tensors: dict) -> dict:
    """The constructor config of a file: its metadata with training names renamed, and what the weights say where the
    metadata is silent (a 1x1 ``encoder.proj`` means a feature-map tokenizer: ``patch_proj`` False; the class
    embedding means ``n_labels``)."""
    raw = _parse_metadata(meta)
    config = {TRAINING_NAMES.get(k, k): v for k, v in raw.items() if k not in TRAINING_NAMES}
    for old, new in TRAINING_NAMES.items():  # a constructor key beats its training name; mask_size beats input_size
        if old in raw and new not in raw and (new not in config or old == "mask_size"):
            config[new] = raw[old]
    proj = tensors.get("encoder.proj.weight")
    if "patch_proj" not in config and proj is not None and proj.dim() == 4:
        config["patch_proj"] = tuple(proj.shape[-2:]) != (1, 1)
    if "n_labels" not in config and "cls_emb.weight" in tensors:
        config["n_labels"] = int(tensors["cls_emb.weight"].shape[0])
    if "post_mlp" not in config and "encoder.norm_mlp.weight" in tensors:
        config["post_mlp"] = True
    if "out_conv" not in config and any(k.startswith("decoder.out_conv.") for k in tensors):
        config["out_conv"] = True
    return config


def load_official(path: str | os.PathLike, meta: dict | None = None) -> _VQ:
    """An official tokenizer file, loaded strictly (its config from the metadata)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = meta if meta is not None else (f.metadata() or {})
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # cloned: aligned memory, the released rounding
    config = config_from_file(meta, tensors)
    model = build_tokenizer(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise TokenizerError(f"{path}: does not fit the {type(model).__name__} its config describes: missing "
                             f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                             f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return model.eval()


# --- the official input transforms (what save_vq_tokens.py feeds each tokenizer) ---------------------------------
def _depth(raw) -> torch.Tensor:
    """16-bit depth ``[B, H, W]`` -> per image ``(x - mean(t)) / sqrt(var(t) + 1e-6)``, x = raw / 65535 and t the
    values between the 10th and 90th percentile (sorted, unbiased variance): ``[B, 1, H, W]``."""
    a = np.asarray(raw)
    a = a[None] if a.ndim == 2 else a
    out = []
    for img in a:
        x = (img.astype(np.float64) / 65535.0).astype(np.float32)
        t = torch.from_numpy(x).flatten().sort().values
        n = t.numel()
        t = t[int(0.1 * n): int(0.9 * n)]
        out.append((torch.from_numpy(x) - t.mean()) / torch.sqrt(t.var() + 1e-6))
    return torch.stack(out)[:, None]


def _rgb(raw) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> ``[B, 3, H, W]`` in [-1, 1] (mean and std 0.5: the space the DiVAE decodes to; the
    ImageNet mean/std of the 4M model's RGB input would be the wrong one)."""
    x = torch.as_tensor(np.asarray(raw))
    x = x[None] if x.dim() == 3 else x
    return x.permute(0, 3, 1, 2).float() / 255.0 * 2 - 1


def _normal(raw) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` normals -> ``[B, 3, H, W]`` in [-1, 1]."""
    x = torch.as_tensor(np.asarray(raw))
    x = x[None] if x.dim() == 3 else x
    return x.permute(0, 3, 1, 2).float() / 255.0 * 2 - 1


def _semseg(raw) -> torch.Tensor:
    """uint8 class ids ``[B, H, W]`` -> ids + 1 with uint8 wrap-around (void 255 -> 0), int64."""
    x = torch.as_tensor(np.asarray(raw))
    x = x[None] if x.dim() == 2 else x
    return (x.to(torch.uint8) + 1).to(torch.int64)


def _sam_mask(raw) -> torch.Tensor:
    """uint8 masks 0/255 ``[B, H, W]`` -> ``[B, 1, H, W]`` in [-1, 1]."""
    x = torch.as_tensor(np.asarray(raw))
    x = x[None] if x.dim() == 2 else x
    return (x.float() / 255.0 * 2 - 1)[:, None]


def _global(raw) -> torch.Tensor:
    """``[B, D]`` embeddings -> ``[B, D, 1, 1]``."""
    x = torch.as_tensor(np.asarray(raw)).float()
    return x[None, :, None, None] if x.dim() == 1 else x[:, :, None, None]


def _feature_map(raw) -> torch.Tensor:
    """A teacher's feature map ``[B, C, h, w]``, as it is."""
    x = torch.as_tensor(np.asarray(raw)).float()
    return x[None] if x.dim() == 3 else x


INPUT_TRANSFORMS = {"rgb": _rgb, "depth": _depth, "normal": _normal, "semseg": _semseg, "sam_mask": _sam_mask,
                    "global": _global, "pose": _global, "feature_map": _feature_map, "edge": _sam_mask}


def tokenizer_input(kind: str, raw) -> torch.Tensor:
    """The official input transform of a tokenizer kind, on a batch as stored on disk."""
    if kind not in INPUT_TRANSFORMS:
        raise TokenizerError(f"unknown tokenizer input kind {kind!r}; kinds: {sorted(INPUT_TRANSFORMS)}")
    return INPUT_TRANSFORMS[kind](raw)


# --- an official tokenizer serving one modality folder: this project's modality tensors in and out ------------------
def _depth_tensor(x: torch.Tensor) -> torch.Tensor:
    """Metres ``[B, 1, H, W]`` -> the stored 16-bit millimetres -> the official standardisation."""
    mm = (x[:, 0].double() * 1000.0).round().clamp(0, 65535).to(torch.int32)
    return _depth(mm.numpy())


TO_OFFICIAL = {  # ModalitySpec.official_input -> modality tensor batch -> the official tokenizer's input
    "rgb": lambda x: x.float() * 2 - 1,
    "depth": _depth_tensor,
    "normal": lambda x: x.float(),
    "semseg": lambda x: (x.to(torch.uint8) + 1).to(torch.int64),
    "edge": lambda x: x.float() * 2 - 1,
    "feature_map": lambda x: x.float(),
}
FROM_OFFICIAL = {  # ModalitySpec.official_input -> decoder output -> modality tensor batch
    "rgb": lambda y: ((y + 1) / 2).clamp(0, 1),
    "depth": lambda y: y,  # standardised depth: relative (compare after a scale-and-shift fit)
    "normal": lambda y: torch.nn.functional.normalize(y, dim=1),
    "semseg": lambda y: (y.argmax(1) - 1) % 256,  # ids shifted back: 0 (void) -> 255
    "edge": lambda y: (y > 0).float(),
    "feature_map": lambda y: y,
}


class ForModality(nn.Module):
    """An official tokenizer as the tokenizer of one modality folder, with the interface of this project's own
    (``config.modality / token_modality / image_size / grid / codebook_size``, ``encode`` and ``decode`` of modality
    tensors): the official input transform before, the inverse after, tokens at ``image_size`` px."""

    def __init__(self, model: _VQ, modality: str, image_size: int = 224, steps: int = 25, scheduler: str | None = None,
                 seed: int = 0):
        super().__init__()
        from types import SimpleNamespace

        from fourm.modalities import spec

        s = spec(modality)
        if s.official_input not in TO_OFFICIAL:
            raise TokenizerError(f"modality {modality!r}: no official image tokenizer input for it (its spec's "
                                 f"official_input is {s.official_input!r}; image kinds: {sorted(TO_OFFICIAL)})")
        c = model.config
        patch = c["patch_size"] if c["patch_proj"] else 1
        # a feature map is tokenized on its own grid: image_size / patch cells (14 x 14 for CLIP-B/16 at 224 px)
        size = image_size if c["patch_proj"] else image_size // c["patch_size"]
        if size % patch:
            raise TokenizerError(f"image_size {image_size} is not a multiple of the tokenizer's patch size {patch}")
        self.model, self.kind, self.steps, self.scheduler, self.seed = model.eval(), s.official_input, steps, scheduler, seed
        self.config = SimpleNamespace(
            modality=modality, token_modality=s.token, image_size=size, grid=size // patch, codebook_size=model.vocab_size,
            kind="feature" if s.official_input == "feature_map" else s.official_input, num_classes=max((c["n_labels"] or 1) - 1, 0),
            ignore_index=255, official=True)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.tokenize(TO_OFFICIAL[self.kind](x))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, DiVAE):
            g = torch.Generator().manual_seed(self.seed)
            size = self.config.grid * self.model.config["patch_size"]
            out = self.model.decode_tokens(ids, timesteps=self.steps, generator=g, image_size=size, scheduler=self.scheduler)
        else:
            out = self.model.decode_tokens(ids)
        return FROM_OFFICIAL[self.kind](out)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ForVectors(nn.Module):
    """An official global-embedding (memcodes) tokenizer as the tokenizer of a folder of vectors: ``encode([B, D])`` ->
    ``[B, heads]`` ids (16 for DINOv2 / ImageBind globals, stored as a 4 x 4 grid), ``decode`` -> ``[B, D]``."""

    def __init__(self, model: _VQ, modality: str):
        super().__init__()
        from types import SimpleNamespace

        from fourm.modalities import spec

        if not isinstance(model.quantize, Memcodes):
            raise TokenizerError(f"{modality}: a vector folder takes an official memcodes tokenizer")
        heads = model.config["num_codebooks"]
        side = int(round(heads ** 0.5))
        self.model = model.eval()
        self.config = SimpleNamespace(modality=modality, token_modality=spec(modality).token, grid=side,
                                      codebook_size=model.vocab_size, kind="global", official=True)

    @torch.no_grad()
    def encode(self, v: torch.Tensor) -> torch.Tensor:
        return self.model.tokenize(v.float()[:, :, None, None]).flatten(1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decode_tokens(ids.reshape(len(ids), -1)).flatten(1)
