"""Training the official tokenizer architectures here, written in the official file format (what ``load_tokenizer``
and the official loader read strictly).

    fourm-bench tokenize train arch=vit_vqvae modality=semseg data=<dataset> official.enc_type=vit_t_enc ...
    fourm-bench tokenize train arch=divae modality=depth data=<dataset> official.dec_type=unet_patched_t ...
    fourm-bench tokenize train arch=mlp_vqvae modality=dinov2_global data=<dataset>

* ``vit_vqvae``: ViT encoder and decoder, the cosine-similarity codebook with the EMA update of lucid's
  ``CosineSimCodebook`` (counts and normalised means, decay ``ema_decay``; codes used less than
  ``threshold_ema_dead_code`` replaced by latents of the batch) and a commitment loss; reconstruction: cross-entropy
  over ``n_labels`` for semseg, MSE otherwise, on the official input transform of the data.
* ``divae``: the same encoder and codebook; the patched UNet learns to predict x0 from x_t (t uniform, the
  zero-terminal-SNR schedule) conditioned on the quantized embedding (MSE).
* ``mlp_vqvae``: bottleneck MLPs and memcodes (a straight-through Gumbel-softmax over each head's codes) on folders of
  vectors; MSE.

Runs are keyed like every tokenizer run (``<out>/<run id>``); the weights are written once, at the end, with
``DONE`` (no mid-run resume for these architectures).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from tqdm import tqdm

from fourm.files import atomic_write_bytes
from fourm.modalities import spec
from fourm.runs import Run, open_run, run_id
from fourm.tokenizers import official
from fourm.tokenizers.official import TO_OFFICIAL, DiVAE, build_tokenizer
from fourm.tokenizers.vq_quantizers import CosineQuantizer, Memcodes

ARCHS = ("vit_vqvae", "divae", "mlp_vqvae")


def official_config(cfg: dict) -> dict:
    """The official constructor config of a tokenize-train config (``arch``, ``modality``, ``official.*``)."""
    arch, o = cfg["arch"], dict(cfg["official"])
    if o.get("latent_dim") is None:  # the released tokenizers': 32 for the image ones, 1024 for the global MLP ones
        o["latent_dim"] = 1024 if arch == "mlp_vqvae" else 32
    name = cfg["modality"]["name"]
    s = spec(name)
    if arch == "mlp_vqvae":
        return {"enc_type": o["mlp"], "dec_type": o["mlp"], "quant_type": "memcodes", "n_channels": int(o["vector_dim"]),
                "codebook_size": int(o["codebook_size"]), "num_codebooks": int(o["num_codebooks"]),
                "latent_dim": int(o["latent_dim"]), "patch_proj": False, "post_mlp": True, "image_size": 224,
                "patch_size": 14, "norm_codes": True, "n_labels": None, **_training_keys(o)}
    feature = s.official_input == "feature_map"
    n_labels = int(cfg["modality"].get("num_classes") or 0) + 1 if s.official_input == "semseg" else None
    channels = {"rgb": 3, "normal": 3, "depth": 1, "edge": 1, "semseg": int(o["semseg_embedding"])}
    n_channels = int(cfg["modality"].get("feature_dim") or 0) if feature else channels.get(s.official_input)
    if not n_channels:
        raise ValueError(f"arch={arch}: modality {name!r} has no official image input (spec official_input "
                         f"{s.official_input!r}); use rgb, depth, normal, semseg, edges or a feature map with feature_dim")
    # a feature map's grid is its modality's (as for the project's own tokenizer: the modality group wins)
    size = int(cfg["modality"].get("image_size") or cfg["model"]["image_size"])
    common = {"enc_type": o["enc_type"], "quant_type": "lucid", "codebook_size": int(o["codebook_size"]),
              "num_codebooks": 1, "latent_dim": int(o["latent_dim"]), "n_channels": n_channels, "n_labels": n_labels,
              "image_size": size * int(o["patch_size"]) if feature else size, "patch_size": int(o["patch_size"]),
              "patch_proj": not feature, "post_mlp": True, "norm_codes": True, **_training_keys(o)}
    if arch == "vit_vqvae":
        return {**common, "dec_type": o["vit_dec_type"], "out_conv": False}
    return {**common, "dec_type": o["unet_type"], "scheduler": "ddpm", "num_train_timesteps": 1000,
            "beta_schedule": "linear", "prediction_type": "sample", "thresholding": True, "clip_sample": False,
            "zero_terminal_snr": True, "conditioning": "concat"}


def _training_keys(o: dict) -> dict:
    # stored in the file as the official trainer stores them; the loaders ignore them
    return {"ema_decay": float(o["ema_decay"]), "threshold_ema_dead_code": float(o["threshold_ema_dead_code"]),
            "commitment_weight": float(o["commitment_weight"]), "code_replacement_policy": "batch_random"}


# --- quantizer training (the inference classes hold the parameters; these functions update them) -------------------
def lucid_step(q: CosineQuantizer, latents: torch.Tensor, decay: float, threshold: float, gen: torch.Generator):
    """Quantize with a straight-through gradient; update the codebook by EMA and replace dead codes.
    Returns (straight-through quantized latents, commitment loss, ids)."""
    B, D, h, w = latents.shape
    x = latents.permute(0, 2, 3, 1).reshape(-1, D)
    xn = F.normalize(x, dim=-1)
    cb = q._codebook
    ids = (xn.detach() @ F.normalize(cb.embed, dim=-1).t()).argmax(-1)
    quant = cb.embed[ids]
    commit = F.mse_loss(quant.detach(), xn)
    with torch.no_grad():
        onehot = F.one_hot(ids, q.codebook_size).float()
        bins = onehot.sum(0)
        cb.cluster_size.mul_(decay).add_(bins, alpha=1 - decay)
        zero = bins == 0
        means = F.normalize((onehot.t() @ xn) / bins.clamp_min(1)[:, None], dim=-1)
        means = torch.where(zero[:, None], cb.embed, means)
        cb.embed.mul_(decay).add_(means, alpha=1 - decay)
        dead = cb.cluster_size < threshold
        if dead.any():
            pick = torch.randint(0, xn.shape[0], (int(dead.sum()),), generator=gen)
            cb.embed[dead] = xn[pick].detach()
            cb.cluster_size[dead] = threshold
    st = xn + (quant - xn).detach()
    return st.reshape(B, h, w, D).permute(0, 3, 1, 2), commit, ids


def memcodes_step(q: Memcodes, latents: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-softmax over each head's codes: (quantized latents, ids)."""
    B, D, h, w = latents.shape
    logits = q.scores(latents)  # [B, hw, heads, codes]
    soft = F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)
    values = q.to_v(q.codes)  # [heads, codes, head_dim]
    out = torch.einsum("bnhc,hcd->bnhd", soft, values).reshape(B, h * w, D)
    return out.transpose(1, 2).reshape(B, D, h, w), soft.argmax(-1)


def save_official(model: official._VQ, path: str | Path) -> Path:
    """The official format: every state_dict tensor (fp32), the constructor config as ``str(value)`` metadata."""
    tensors = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in model.config.items()}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))
    return Path(path)


# --- data ---------------------------------------------------------------------------------------------------------
def _data(cfg: dict, progress: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train, val) official inputs, and the input kind."""
    from fourm.tokenizers.mlp_vqvae import load_vectors
    from fourm.tokenizers.train import load_splits

    name = cfg["modality"]["name"]
    if cfg["arch"] == "mlp_vqvae":
        data = Path(cfg["data"])
        train = load_vectors(data / cfg["split"], name)
        val = load_vectors(data / cfg["val_split"], name) if (data / cfg["val_split"] / name).is_dir() else train[-8:]
        return train[:, :, None, None], val[:, :, None, None], "global"
    from types import SimpleNamespace

    mcfg = SimpleNamespace(modality=name, image_size=int(cfg["model"]["image_size"]))
    train_x, val_x = load_splits(cfg, mcfg, progress)
    kind = spec(name).official_input
    return TO_OFFICIAL[kind](train_x), TO_OFFICIAL[kind](val_x), kind


def _loss(model, x: torch.Tensor, kind: str, o: dict, step_gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    latents = model.encode_latents(x)
    if isinstance(model.quantize, Memcodes):
        quant, ids = memcodes_step(model.quantize, latents)
        commit = torch.zeros(())
    else:
        quant, commit, ids = lucid_step(model.quantize, latents, float(o["ema_decay"]), float(o["threshold_ema_dead_code"]),
                                        step_gen)
    if isinstance(model, DiVAE):
        x0 = x.clamp(-1, 1) if kind != "depth" else x
        t = torch.randint(0, model.schedule.T, (x.shape[0],), generator=step_gen)
        noise = torch.randn(x0.shape, generator=step_gen)
        pred = model.decoder(model.schedule.add_noise(x0, noise, t), t, quant)
        recon = F.mse_loss(pred, x0)
    else:
        out = model.decode_quant(quant)
        recon = F.cross_entropy(out, x.long()) if kind == "semseg" else F.mse_loss(out, x)
    usage = float(torch.unique(ids).numel()) / model.vocab_size
    return recon + float(o["commitment_weight"]) * commit, {"recon_loss": float(recon.detach()), "vq_loss": float(commit.detach()), "usage": usage}


@torch.no_grad()
def _val(model, x: torch.Tensor, kind: str, o: dict) -> dict:
    model.eval()
    ids = model.tokenize(x)
    if isinstance(model, DiVAE):
        out = model.decode_tokens(ids, timesteps=int(o["val_steps"]), generator=torch.Generator().manual_seed(0),
                                  image_size=x.shape[-1], scheduler="ddim")
    else:
        out = model.decode_tokens(ids)
    model.train()
    metrics = {"codes_used": int(torch.unique(ids).numel())}
    if kind == "semseg":
        metrics["pixel_acc"] = float((out.argmax(1) == x).double().mean())
    else:
        metrics["mse"] = float(F.mse_loss(out, x.clamp(-1, 1) if isinstance(model, DiVAE) and kind != "depth" else x))
        metrics["baseline_mse"] = float(F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x))
    return metrics


def train_official(cfg: dict, progress: bool = True) -> Run:
    """Train the ``arch`` of a tokenize-train config; the run folder holds ``tokenizer.safetensors`` (official)."""
    cfg = dict(cfg)
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"arch={cfg['arch']!r}: choose conv or one of {ARCHS}")
    out = cfg.pop("out")
    done = Run(Path(out) / run_id(cfg))
    if done.done:
        return done
    config = official_config(cfg)
    train_x, val_x, kind = _data(cfg, progress)
    torch.manual_seed(cfg["seed"])
    model = build_tokenizer(config).train()
    run = open_run(out, cfg)
    o, bs = cfg["official"], int(cfg["batch_size"])
    total = int(cfg["epochs"]) * max(len(train_x) // bs, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.perf_counter()
    for step in tqdm(range(total), desc=f"tokenizer {cfg['arch']} {cfg['modality']['name']}", unit="step", disable=not progress):
        idx = torch.randint(0, len(train_x), (min(bs, len(train_x)),), generator=gen)
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * min(1.0, (step + 1) / max(int(cfg["warmup_steps"]), 1)) * \
                (0.5 * (1 + math.cos(math.pi * step / max(total, 1))))
        loss, rec = _loss(model, train_x[idx], kind, o, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        if (step + 1) % int(cfg["log_every"]) == 0 or step + 1 == total:
            run.log(step=step + 1, loss=loss.item(), **rec)
    model.eval()
    path = save_official(model, run.path / "tokenizer.safetensors")
    metrics = {"arch": cfg["arch"], "modality": cfg["modality"]["name"], "token_modality": cfg["modality"]["token_modality"],
               "vocab_size": model.vocab_size, "steps": total, "train_seconds": round(time.perf_counter() - t0, 2),
               "val": _val(model, val_x, kind, o), "tokenizer": str(path), "input": kind}
    run.write_metrics(metrics)
    run.mark_done()
    return run

