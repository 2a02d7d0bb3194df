"""Hydra config composition, the one way every command turns a YAML recipe plus ``key=value`` overrides into a config."""
from __future__ import annotations

import json
import os
from pathlib import Path


class ComposeError(ValueError):
    """A recipe that does not compose with its overrides; the message names the file, the overrides and hydra's reason."""


def _one_line(message: str) -> str:
    """Hydra's reason on one line: its first line, and the options it lists (not its config search path)."""
    lines = [ln.strip() for ln in message.split("Config search path:")[0].splitlines() if ln.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        return f"{lines[0]}; options: {', '.join(lines[2:])}"
    return "; ".join(lines)


def quote_braces(override: str) -> str:
    """``shards=a-{000..003}.tar`` -> ``shards='a-{000..003}.tar'``: hydra's grammar reads bare braces as a dict, and
    brackets inside a value (``data=/d/[rgb,depth]/shard-00000.tar``) as a list; a value that is a list stays one."""
    key, eq, value = override.partition("=")
    inner_brackets = "[" in value and value[:1] != "["
    if eq and ("{" in value or inner_brackets) and "$" not in value and value[:1] not in ("'", '"'):
        return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return override


def compose(config_dir: str | os.PathLike, name: str, overrides: list[str] = (), job_name: str = "fourm-bench"):
    """``<config_dir>/<name>.yaml`` composed with ``overrides`` (braceexpand patterns quoted) -> an OmegaConf config.

    A hydra left initialised by a caller (a hydra app, an interrupted compose) is cleared first."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [quote_braces(o) for o in overrides]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    path = Path(config_dir) / f"{name}.yaml"
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None, job_name=job_name):
            return hydra_compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ComposeError(f"{path} with overrides {overrides}: {_one_line(str(e))}") from None
    except Exception as e:  # a YAML syntax error surfaces as yaml.YAMLError
        if type(e).__module__.startswith("yaml"):
            raise ComposeError(f"{path}: not valid YAML: {e}") from None
        raise


def format_configs(items) -> str:
    """``(title, config)`` pairs as YAML documents, each headed by a ``# title`` comment (``--print-config``)."""
    import yaml

    from fourm.runs import canonical_json

    docs = []
    for title, config in items:
        plain = json.loads(canonical_json(config))
        docs.append(f"# {title}\n" + yaml.safe_dump(plain, sort_keys=False))
    return "---\n".join(docs)


def parse_cli(parser, argv: list[str]):
    """``parser.parse_args(argv)`` with ``--print-config``: print the parsed settings as YAML and exit 0, as
    ``--help`` exits (every command shows what it resolves to)."""
    import yaml

    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    args = parser.parse_args(argv)
    if args.print_config:
        settings = {k: v for k, v in vars(args).items() if k != "print_config" and not callable(v)}
        print(yaml.safe_dump(json.loads(json.dumps(settings, default=str)), sort_keys=False), end="")
        raise SystemExit(0)
    del args.print_config
    return args
