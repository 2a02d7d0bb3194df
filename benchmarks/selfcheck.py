"""`fourm-bench selfcheck`: every accelerated path once, with a table of pass/fail and throughput.

    fourm-bench selfcheck [--device cuda] [--only pretrain,generation] [--work /tmp/fourm_selfcheck]

Checks, in order (``--only`` picks some):

  pretrain      nano pretraining steps on the official per-modality layout, 2 DataLoader workers (bf16 on a GPU)
  compile       the same with torch.compile on each block
  fsdp          FSDP on one rank (torchrun, 1 process)
  transfer_*    one short run of each registered transfer task (tiny profile) on the world's layouts
  generation    KV-cached captions and batched classifier-free guidance (both against their reference: same tokens)
  tokenizers    the official tokenizers' encode and decode (VQ-VAE and diffusion decoder)
  mfu           the 4M-B train step: FLOPs, tokens/s, MFU on a known GPU

On a machine without a GPU it runs on the CPU (slowly: use ``--only``); ``--device cuda`` without one is one line.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS: dict = {}


def check(name: str):
    def register(fn):
        CHECKS[name] = fn
        return fn
    return register


def _data(work: Path) -> str:
    from benchmarks.data import write_dataset

    return write_dataset(work / "official_layout", 256)


def _pretrain(work: Path, name: str, extra: list[str], steps: int = 6) -> str:
    from benchmarks.data import config
    from fourm import runs
    from fourm.pretrain.loop import train

    cfg = config(_data(work), 16, 2, ["_resume=never", *extra])
    import shutil

    shutil.rmtree(work / name, ignore_errors=True)
    run = runs.open_run(work / name, cfg)
    m = train(cfg, run, stop_after=steps, progress=False)
    return f"{m['tokens_per_second']:.0f} tok/s, loss {m['train/loss']:.3f}"


@check("pretrain")
def _check_pretrain(work: Path, device: str) -> str:
    return _pretrain(work, "pretrain", ["precision=auto"])


@check("compile")
def _check_compile(work: Path, device: str) -> str:
    return _pretrain(work, "compile", ["compile=true"], steps=3)


def _fsdp_one_gpu(work: Path) -> str:
    """One GPU: a one-process group, each block a fully_shard unit in bf16, one forward and backward."""
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from benchmarks.data import config
    from fourm.distributed import DistEnv
    from fourm.pretrain.loop import build_model
    from fourm.pretrain.stream import StreamingData

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = config(_data(work), 16)
        model = build_model(cfg).cuda()
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
        for blk in [*model.encoder, *model.decoder]:
            fully_shard(blk, mp_policy=mp)
        batch = StreamingData(cfg, DistEnv()).train_batch(0, 0)
        batch = {m: {k: v.cuda() for k, v in d.items()} for m, d in batch.items()}
        t = time.perf_counter()
        loss, _ = model(batch, cfg["budget"]["num_input_tokens"], cfg["budget"]["num_target_tokens"])
        loss.backward()
        torch.cuda.synchronize()
        return f"one rank, bf16 blocks: step {time.perf_counter() - t:.2f} s, loss {float(loss):.3f}"
    finally:
        dist.destroy_process_group()


@check("fsdp")
def _check_fsdp(work: Path, device: str) -> str:
    from benchmarks.data import MODS, TEXT_TOKENIZER

    ranks = 2 if device == "cpu" else min(2, torch.cuda.device_count())
    if ranks == 1:
        return _fsdp_one_gpu(work)
    path = _data(work)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", "29533", "-m",
           "fourm.cli", "pretrain", "model=nano", f"data.train={path}", f"data.val={path}",
           f"data.text_tokenizer={TEXT_TOKENIZER}", "alphas.spec=mix_mod7_all2all_rgb2all_a0.5",
           f"model.domains_in=[{','.join(MODS)}]", f"model.domains_out=[{','.join(MODS[1:])}]", "batch_size=8",
           "distributed.strategy=fsdp", "schedule.total_tokens=3072", "schedule.warmup_tokens=1024",
           "val.every_steps=3", "val.batches=1", "checkpoint.every_steps=3", f"runs_root={work / 'fsdp'}",
           "resume=never"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return f"{ranks} ranks, 3 steps in {time.perf_counter() - t:.1f} s (with start-up)"


def _layouts(work: Path) -> Path:
    from fourm.data import world
    from fourm.data.layouts import write_layouts

    root = work / "world"
    if not (root / "layouts").exists():
        world.generate(str(root), 24, 64, seed=0, split="train")
        world.generate(str(root), 8, 64, seed=1, split="val")
        write_layouts(root, root / "layouts")
    return root / "layouts"


def _transfer(task: str):
    def run(work: Path, device: str) -> str:
        from transfer.run import cli

        length = ["train.epochs=1"] if task == "in1k" else ["train.iters=2", "train.warmup_iters=1"]
        if task == "nyuv2_semseg_rgbd":  # its depth input is tokenized: a tiny depth tokenizer of the world
            length.append(f"transfer.depth_tokenizer={_depth_tokenizer(work)}")
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli([f"task={task}", "profile=tiny", "init=random", f"data_root={_layouts(work)}",
                      f"runs_root={work / 'transfer'}", *length])
        if rc:
            raise RuntimeError(f"fourm-bench transfer task={task} exited {rc}")
        return f"{time.perf_counter() - t:.1f} s"
    return run


def _depth_tokenizer(work: Path) -> str:
    from fourm.tokenizers.train import compose_config
    from fourm.tokenizers.train import train as train_tokenizer

    _layouts(work)
    cfg = compose_config("train", ["modality=depth", f"data={work / 'world'}", f"out={work / 'tokenizer'}",
                                   "model.image_size=64", "model.channels=[8,16,32]", "model.codebook_size=64",
                                   "epochs=1", "batch_size=8", "warmup_steps=1", "log_every=1"])
    return str(train_tokenizer(cfg, progress=False).path)


def _register_transfer() -> None:
    from transfer.tasks import tasks

    for name in tasks():
        check(f"transfer_{name}")(_transfer(name))


@check("generation")
def _check_generation(work: Path, device: str) -> str:
    from tokenizers import Tokenizer

    from benchmarks.generation import bench_model
    from benchmarks.data import TEXT_TOKENIZER

    lines = bench_model("fm_nano_2e_2d_swiglu_nobias", 4, 16, Tokenizer.from_file(str(TEXT_TOKENIZER)), 1, device)
    if not all("identical=True" in line for line in lines):
        raise RuntimeError("cached / batched generation differs from its reference: " + " | ".join(lines))
    return "; ".join(" ".join(line.split()[1:9]) for line in lines)


@check("tokenizers")
def _check_tokenizers(work: Path, device: str) -> str:
    from fourm.tokenizers import load_tokenizer, register_architecture

    fixtures = ROOT / "tests" / "fixtures" / "official_tokenizers"
    register_architecture("vit_t_enc", dim_tokens=32, depth=2, num_heads=2)
    register_architecture("vit_t_dec", dim_tokens=32, depth=2, num_heads=2)
    register_architecture("unet_patched_t", patch_size=4, model_channels=32, num_res_blocks=1,
                          attention_resolutions=[2], channel_mult=(1, 2))
    out = []
    for name, x in (("semseg_vqvae", torch.randint(0, 8, (4, 32, 32))), ("depth_divae", torch.randn(4, 1, 32, 32))):
        tok = load_tokenizer(fixtures / f"{name}.safetensors").to(device).eval()
        t = time.perf_counter()
        with torch.no_grad():
            ids = tok.tokenize(x.to(device))
            y = tok.decode_tokens(ids, timesteps=5) if name == "depth_divae" else tok.decode_tokens(ids)
        if not torch.isfinite(y.float()).all():
            raise RuntimeError(f"{name}: decoded values are not finite")
        out.append(f"{name} {4 / (time.perf_counter() - t):.1f} img/s")
    return ", ".join(out)


@check("mfu")
def _check_mfu(work: Path, device: str) -> str:
    from benchmarks.mfu import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["--steps", "1", "--batch", "2"])
    lines = [line.strip() for line in buf.getvalue().splitlines() if "tok/s" in line or "MFU" in line]
    return " | ".join(lines[-2:]) or buf.getvalue().strip().splitlines()[-1]


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fourm-bench selfcheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="", help="comma-separated checks (default: all)")
    ap.add_argument("--work", default="/tmp/fourm_selfcheck")
    ap.add_argument("--print-config", action="store_true", help="print the checks that would run and exit")
    args = ap.parse_args(argv)
    _register_transfer()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("fourm-bench selfcheck: --device cuda, but no GPU is visible here (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or with --device cpu", file=sys.stderr)
        return 2
    names = [n for n in args.only.split(",") if n] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"fourm-bench selfcheck: unknown checks {unknown}; choose from {list(CHECKS)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(f"device: {args.device}\nwork: {args.work}\nchecks: {names}")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FOURM_NO_PROGRESS", "1")
    rows, failed = [], 0
    for name in names:
        (work / f"{name}.traceback.txt").unlink(missing_ok=True)
        t = time.perf_counter()
        try:
            detail, status = CHECKS[name](work, args.device), "pass"
        except Exception as e:  # a failing check is a row of the table, not the end of the run
            detail, status = f"{type(e).__name__}: {e}".splitlines()[0][:160], "FAIL"
            failed += 1
            (work / f"{name}.traceback.txt").write_text(traceback.format_exc())
        rows.append((name, status, time.perf_counter() - t, detail))
        print(f"{name:<26} {status:<5} {rows[-1][2]:>7.1f} s  {detail}", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\n{len(rows) - failed}/{len(rows)} checks passed on {device}"
          + (f"; tracebacks in {work}/*.traceback.txt" if failed else ""))
    return 1 if failed else 0
