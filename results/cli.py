"""`fourm-bench results collect|table|plot`.

    fourm-bench results collect ROOT... [--out DIR] [--select last|best] [--by METRIC[:min|max]]
    fourm-bench results table --layout transfer|ablation|custom|oob [--in collected.parquet | ROOT...] [--out DIR]
                              [--select last|best --by METRIC] [--where KEY=VALUE]... [layout options]
    fourm-bench results plot --x model_size|data_size|train_tokens|KEY --y avg_loss|METRIC [--series KEY]
                             [--in collected.parquet | ROOT...] [--out DIR] [--bars]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fourm.configs import parse_cli
from results.collect import collect, describe, load_collected

DEFAULT_OUT = "report"


def _where(items: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--where {item!r}: expected KEY=VALUE (e.g. --where transfer.task=in1k)")
        k, v = item.split("=", 1)
        out.setdefault(k, []).append(v)
    return out


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("roots", nargs="*", metavar="ROOT", help="run roots to collect on the fly")
    p.add_argument("--in", dest="inp", metavar="FILE", help="a collected .parquet/.csv (from `results collect`)")
    p.add_argument("--select", default="last", help="eval selection when collecting: last | best (with --by)")
    p.add_argument("--by", metavar="METRIC[:min|max]", help="validation metric for --select best (e.g. val/loss)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE", help="keep rows with KEY=VALUE (repeatable)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")


def _load(args, need: bool = True):
    if args.inp and args.roots:
        raise SystemExit("give either --in FILE or ROOT..., not both")
    if args.inp:
        if args.select != "last" or args.by:
            raise SystemExit(f"--select/--by apply when collecting; {args.inp} was collected with "
                             "its own rule (see its `select` column): re-collect from ROOT... to change it")
        return load_collected(args.inp)
    if args.roots:
        c = collect(*args.roots, select=args.select, by=args.by)
        print(describe(c), file=sys.stderr)
        return c.table
    if need:
        raise SystemExit("no runs: give ROOT... or --in collected.parquet")
    return None


def _report_written(written: dict) -> None:
    for path, status in written.values():
        print(f"{status} {path}")


def cmd_collect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fourm-bench results collect", description="collect run folders into one long table")
    p.add_argument("roots", nargs="+", metavar="ROOT")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--name", default="collected", help="file stem (default: collected)")
    p.add_argument("--select", default="last", help="last | best (with --by): which entry of metrics['evals'] is the result")
    p.add_argument("--by", metavar="METRIC[:min|max]", help="validation metric for --select best, e.g. val/loss")
    args = parse_cli(p, argv)
    c = collect(*args.roots, select=args.select, by=args.by)
    print(describe(c))
    out = Path(args.out)
    existed = {k: (out / f"{args.name}.{k}").exists() for k in ("csv", "parquet", "json")}
    for kind, path in c.save(out, args.name).items():
        print(f"{'replaced' if existed[kind] else 'wrote'} {path}")
    return 0


def cmd_table(argv: list[str]) -> int:
    from results.tables import table

    p = argparse.ArgumentParser(prog="fourm-bench results table", description="paper-layout tables (md, tex, csv)")
    p.add_argument("--layout", choices=("transfer", "ablation", "custom", "oob"), default="transfer")
    _add_source(p)
    p.add_argument("--name", help="file stem (default: table_<layout>)")
    p.add_argument("--decimals", type=int)
    g = p.add_argument_group("transfer")
    g.add_argument("--method-key", help="config key naming a run's method (default: method, else transfer.init)")
    g.add_argument("--size-key", help="config key giving the model size (default: model.size, model.name, ...)")
    g.add_argument("--no-published", action="store_true", help="only our runs")
    g = p.add_argument_group("ablation")
    g.add_argument("--metric", default="loss", help="per-task metric (default: loss, i.e. val/loss); TASK=METRIC,... for a mix")
    g.add_argument("--tasks", help="comma-separated tasks (default: all)")
    g.add_argument("--keys", help="comma-separated grid keys (default: the config keys that vary within a task)")
    g.add_argument("--reference", metavar="KEY=VALUE[,...]", help="normalise each task by this grid row before averaging")
    g = p.add_argument_group("custom")
    g.add_argument("--index", help="comma-separated row keys")
    g.add_argument("--columns", default="metric", help="comma-separated column keys (default: metric)")
    g.add_argument("--values", default="value")
    g.add_argument("--metrics", help="comma-separated metric names to keep")
    args = parse_cli(p, argv)
    split = lambda s: [x for x in s.split(",") if x] if s else None  # noqa: E731
    where = _where(args.where)
    kwargs: dict = {}
    if args.decimals is not None:
        kwargs["decimals"] = args.decimals
    if args.layout == "transfer":
        df = _load(args, need=False)
        kwargs.update(where=where, method_key=args.method_key, size_key=args.size_key)
        if args.no_published:
            kwargs["published"] = None
    elif args.layout == "ablation":
        df = _load(args)
        metric = args.metric
        if "=" in metric:
            metric = dict(item.split("=", 1) for item in metric.split(","))
        kwargs.update(where=where, metric=metric, tasks=split(args.tasks), keys=split(args.keys), reference=args.reference)
    elif args.layout == "oob":
        df = _load(args)
        if args.method_key:
            kwargs["method_key"] = args.method_key
    else:
        df = _load(args)
        if not args.index:
            raise SystemExit("--layout custom needs --index KEY[,KEY...] (e.g. --index method,transfer.task)")
        kwargs.update(where=where, index=split(args.index), columns=split(args.columns), values=args.values,
                      metrics=split(args.metrics))
    result = table(df, args.layout, **kwargs)
    print(result.markdown)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    _report_written(result.write(args.out, args.name))
    return 0


def cmd_plot(argv: list[str]) -> int:
    from results.plots import ablation_bars, scaling_plot

    p = argparse.ArgumentParser(prog="fourm-bench results plot", description="scaling curves / ablation bars (png, pdf)")
    _add_source(p)
    p.add_argument("--x", help="model_size | data_size | train_tokens | a config key")
    p.add_argument("--y", default="avg_loss", help="avg_loss (default) or a metric name")
    p.add_argument("--series", help="config key: one line per value")
    p.add_argument("--tasks", help="comma-separated tasks to average over (default: all)")
    p.add_argument("--bars", action="store_true", help="ablation bar chart (one bar per grid point) instead of a curve")
    p.add_argument("--column", default="avg", help="with --bars: avg or a task")
    p.add_argument("--reference", metavar="KEY=VALUE[,...]", help="with --bars: normalise tasks by this grid row")
    p.add_argument("--name", help="file stem")
    p.add_argument("--logy", action="store_true")
    args = parse_cli(p, argv)
    df = _load(args)
    existed = {p for p in Path(args.out).glob("*")} if Path(args.out).is_dir() else set()
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    metric = {"avg_loss": "loss"}.get(args.y, args.y)
    if args.bars:
        result = ablation_bars(df, out=args.out, name=args.name or "ablation_bars", column=args.column, metric=metric,
                               tasks=tasks, where=_where(args.where), reference=args.reference)
    else:
        if not args.x:
            raise SystemExit("--x is required for a scaling plot (model_size | data_size | train_tokens | KEY), or use --bars")
        result = scaling_plot(df, x=args.x, y=args.y, series=args.series, out=args.out, name=args.name,
                              tasks=tasks, where=_where(args.where), logy=args.logy)
    print(result.data.to_string(index=False))
    for path in result.paths.values():
        print(f"{'replaced' if path in existed else 'wrote'} {path}")
    return 0


COMMANDS = {"collect": cmd_collect, "table": cmd_table, "plot": cmd_plot}


def cli(argv: list[str]) -> int:
    """Dispatch ``results <collect|table|plot> ...``; a bad config/input prints one error line and returns 2."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"fourm-bench results {argv[0]}: {msg}", file=sys.stderr)
        return 2
