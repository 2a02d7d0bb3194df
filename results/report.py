"""A pipeline's report: the run folders it names -> transfer table, verdict, scaling plot, out-of-the-box table, summary.

The last job of every pipeline (``ablations/pipeline.py``); it only reads run folders. Into ``out`` it writes
``transfer_table.{md,tex,csv}``, ``collected.csv``, ``scaling.{png,pdf}`` (with two or more pretrained sizes),
``oob_table.*`` and ``generations.png`` (when the pipeline has them), ``summary.json`` and ``report.md``.
"""
from __future__ import annotations

import io
import statistics
from pathlib import Path

from fourm.files import atomic_write_json
from fourm.runs import Run, atomic_write_text, open_run, run_id
from transfer.tasks import get_task

PRETRAINED, RANDOM = "pretrained", "random init"


def headline(task: str, metrics: dict) -> str:
    return ", ".join(f"{h.metric} {metrics.get(h.metric)}" for h in get_task(task).headline)


def verdict(primary: dict[str, dict[str, list[float]]], pretrained: str = "4M-demo (pretrained)",
            random: str = "random init", folders: dict[str, dict[str, dict]] | None = None) -> dict[str, dict]:
    """Per task: the first headline metric's mean over seeds, pretrained vs random init, and whether pretrained wins.

    With several seeds per init it also gives each init's seed std and whether the gap between the means is larger
    than the larger of the two (``beyond_spread``): a gap inside the seed spread is not evidence either way. With one
    seed there is no spread, and ``beyond_spread`` is None. With ``folders`` (task -> label -> seed -> run folder)
    whose runs wrote per-sample results, ``paired`` is a paired bootstrap over the test images (pretrained vs random
    init of the same seed, on the same images: :func:`fourm.per_sample.paired_bootstrap`) and ``significant`` says
    whether its 95% interval of the difference excludes 0."""
    from fourm.per_sample import paired_bootstrap

    out = {}
    for task, by_label in primary.items():
        pre, rand = by_label.get(pretrained), by_label.get(random)
        if not pre or not rand:
            continue
        pm, rm = statistics.fmean(pre), statistics.fmean(rand)
        v = {"metric": get_task(task).metric, "seeds": len(pre), PRETRAINED: pm, RANDOM: rm, "pretrained_wins": pm > rm if get_task(task).headline[0].higher_is_better else pm < rm}
        if len(pre) > 1 and len(rand) > 1:
            v["std"] = {PRETRAINED: statistics.stdev(pre), RANDOM: statistics.stdev(rand)}
            v["beyond_spread"] = abs(pm - rm) > max(v["std"].values())
        else:
            v["beyond_spread"] = None
        runs = (folders or {}).get(task, {})
        pre_runs, rand_runs = runs.get(pretrained, {}), runs.get(random, {})
        pairs = [(pre_runs[s], rand_runs[s]) for s in sorted(pre_runs, key=str) if s in rand_runs]
        if pairs:
            try:
                v["paired"] = paired_bootstrap(pairs, v["metric"], higher_is_better=get_task(task).headline[0].higher_is_better)
            except ValueError:  # runs without per-sample results: the seed spread is all there is
                pass
            else:
                lo, hi = v["paired"]["ci95"]
                v["significant"] = not lo <= 0 <= hi
        out[task] = v
    return out


def verdict_line(v: dict[str, dict]) -> str:
    """The one-paragraph verdict: where pretrained wins or loses, and which gaps are inside the seed spread."""
    lost = [t for t, x in v.items() if not x["pretrained_wins"]]
    line = "pretrained beats random init on " + (f"every task but {', '.join(lost)}" if lost else "every task")
    noisy = [f"{t} ({x[PRETRAINED]:.3g} vs {x[RANDOM]:.3g}, seed std {max(x['std'].values()):.2g})"
             for t, x in v.items() if x.get("beyond_spread") is False]
    if noisy:
        line += "; gaps inside the seed spread (not evidence either way): " + ", ".join(noisy)
    paired = [f"{t} {x['paired']['diff']:+.3g} [{x['paired']['ci95'][0]:+.3g}, {x['paired']['ci95'][1]:+.3g}]"
              f"{'' if x['significant'] else ' (includes 0)'}" for t, x in v.items() if "paired" in x]
    if paired:
        line += ("; pretrained minus random init, 95% interval of a paired bootstrap over the test images: "
                 + ", ".join(paired))
    return line


def stack_pngs(folder: str | Path, path: Path) -> Path:
    """The per-input generation grids of ``folder`` stacked top to bottom into one PNG (written atomically)."""
    from PIL import Image

    from fourm.tokenizers.checkpoint import atomic_write_bytes

    tiles = [Image.open(p).convert("RGB") for p in sorted(Path(folder).glob("*.png"))]
    img = Image.new("RGB", (max(t.width for t in tiles), sum(t.height for t in tiles)), (255, 255, 255))
    y = 0
    for t in tiles:
        img.paste(t, (0, y))
        y += t.height
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(config: dict) -> dict:
    """Read the run folders of ``config`` (see :mod:`ablations.pipeline`), write the outputs; returns the summary."""
    from results.collect import collect
    from results.plots import scaling_plot
    from results.tables import table

    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    labels = config["labels"]
    transfer = {Path(d): info for d, info in config["transfer"].items()}
    missing = [str(d) for d in [*transfer, *map(Path, config["pretrain"].values())] if not Run(d).done]
    if missing:
        raise FileNotFoundError(f"report: runs not DONE: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    order = {label: i for i, label in enumerate(labels)}
    tasks = config["task_order"]
    head: dict[str, dict[str, str]] = {}
    primary: dict[str, dict[str, list[float]]] = {}
    folders: dict[str, dict[str, dict]] = {}
    for d, j in sorted(transfer.items(), key=lambda kv: (order[kv[1]["label"]], tasks.index(kv[1]["task"]), kv[1]["seed"])):
        metrics = Run(d).metrics
        head.setdefault(j["label"], {})[j["key"]] = headline(j["task"], metrics)
        primary.setdefault(j["task"], {}).setdefault(j["label"], []).append(float(metrics[get_task(j["task"]).metric]))
        folders.setdefault(j["task"], {}).setdefault(j["label"], {})[j["seed"]] = d

    pretrain = {m: Path(d) for m, d in config["pretrain"].items()}
    coll = collect(*transfer, *pretrain.values())
    coll.save(out)
    tbl = table(coll.table, layout="transfer")
    probed = config.get("linear_probe_tasks") or []
    if probed:  # the published rows are fine-tuned: say which of our cells are not
        tbl.markdown += (f"\nOurs: {', '.join(probed)} by linear probing (frozen encoder, a linear head on its last "
                         f"block); the other tasks and the published rows are fine-tuned.\n")
    tbl.write(out, "transfer_table")
    plot = None
    if config.get("scaling_plot") and len(pretrain) > 1:
        plot = scaling_plot(collect(*pretrain.values()).table, x="model_size", y="val/loss", out=out, name="scaling")
    v = verdict(primary, *labels[:2], folders=folders) if len(labels) >= 2 else {}
    md = [tbl.markdown, ""]
    if v:
        md.append(verdict_line(v))
    files = {"table": str(out / "transfer_table.md")}
    if config.get("oob"):
        tbl_oob = table(collect(config["oob"]).table, layout="oob")
        tbl_oob.write(out, "oob_table")
        files["oob_table"] = str(out / "oob_table.md")
        md += ["", tbl_oob.markdown]
    if config.get("generations"):
        files["generations"] = str(stack_pngs(config["generations"], out / "generations.png"))
    summary = {"recipe": config.get("recipe"),
               "checkpoints": {m: Run(d).metrics.get("checkpoint") for m, d in pretrain.items()},
               "pretrain_val_loss": {m: Run(d).metrics.get("val/loss") for m, d in pretrain.items()},
               "headline": head, "pretrained_vs_random": v, "linear_probe_tasks": probed,
               "plot": [str(p) for p in plot.paths.values()] if plot else [], **files}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return summary


def report(config: dict, run_dir: str) -> dict:
    """Pipeline entry ``results.report:report``: :func:`write_report` in the report's own run folder."""
    run_dir = Path(run_dir)
    if run_id(config) != run_dir.name:
        raise ValueError(f"run_dir {run_dir} is not this report config's run folder ({run_id(config)})")
    run = open_run(run_dir.parent, config)
    if run.done:
        return run.metrics
    summary = write_report(config)
    print((Path(config["out"]) / "report.md").read_text(), flush=True)
    run.write_metrics({"transfer_runs": len(config["transfer"]), "pretrain_runs": len(config["pretrain"])})
    run.mark_done()
    return summary
