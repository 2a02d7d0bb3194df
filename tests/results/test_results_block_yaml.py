import json
import random

import pytest
import yaml

from fourm.runs import canonical_json
from results import block_yaml

TRICKY = ["on", "off", "yes", "No", "null", "~", "", " ", "1", "1.5", "1e-4", "0x10", "0o7", "1_000", "12:30", "2026-01-01",
          "2026-01-01 10:00:00", "true", "False", ".inf", "-.inf", ".nan", "a: b", "a #b", "#x", "- x", "[x]", "{y}",
          "'quoted'", '"dq"', "multi\nline", "tab\there", "ünïcødé", "→ arrow", "rgb@224", "/a/b/c.pt", "*star", "&amp",
          "!bang", "%pct", "@at", "`tick`", "|pipe", ">gt", "x" * 120, " ".join(["word"] * 40), "trailing ", " leading",
          "a:b", "http://x:80/y", "?q", "-", "--", "---", "...", "key:", "=", "<<"]


def _random_value(rng, depth):
    kind = rng.random()
    if depth < 3 and kind < 0.2:
        return {_random_key(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind < 0.3:
        return [_random_scalar(rng) for _ in range(rng.randint(0, 3))]
    if depth < 3 and kind < 0.31:
        return [{"a": 1}, [1, 2]]  # outside the fast subset: must fall back, not misread
    return _random_scalar(rng)


def _random_scalar(rng):
    if rng.random() < 0.1:
        return rng.choice(TRICKY)
    return rng.choice([rng.randint(-5, 10**6), rng.uniform(-1, 1), 1e-4, 3e10, True, False, None, "rgb@224", "/a/b.pt"])


def _random_key(rng):
    return rng.choice(["seed", "model", "lr", "transfer.task", "a b", "1", "on", "null", "k:v", "x" * 90, "ü", rng.choice(TRICKY)])


def _check(cfg) -> bool:
    """The fast reader agrees with yaml.safe_load (values and types) or declines; True when it took the fast path."""
    text = yaml.safe_dump(json.loads(canonical_json(cfg)), sort_keys=True)
    expected = yaml.safe_load(text)
    got = block_yaml.load(text)
    if got is not None:  # None = "not the simple subset": the caller falls back to yaml
        assert got == expected and _types(got) == _types(expected), text
    return got is not None


def test_same_as_safe_load_on_random_run_store_dumps():
    fast = sum(_check(_random_config(random.Random(seed))) for seed in range(400))
    assert fast > 100  # the comparison above must actually exercise the fast path


def test_tricky_scalars_as_values_items_and_keys():
    fast = 0
    for t in TRICKY:
        for cfg in ({"k": t, "n": {"x": t}}, {"l": [t, "a"]}, {t: 1}):
            fast += _check(cfg)
    # only multi-line / wrapped strings and a few odd keys may decline
    assert fast >= 3 * len(TRICKY) - 12


def _random_config(rng):
    return {_random_key(rng): _random_value(rng, 0) for _ in range(rng.randint(1, 8))}


def _types(obj):
    if isinstance(obj, dict):
        return {k: _types(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_types(v) for v in obj]
    return type(obj).__name__


def test_typical_config_takes_the_fast_path():
    cfg = {"method": "4M", "model": {"size": "B", "name": "fm_base_12e_12d"}, "seed": 0, "empty": {}, "none": None,
           "pretrain": {"modalities": ["rgb@224", "tok_depth@224"], "lr": 1e-4, "tokens": 10**9, "alpha": 0.5},
           "transfer": {"task": "in1k", "init": "/runs/pretrain/0123456789ab/checkpoint-final.pt", "flag": True}}
    text = yaml.safe_dump(json.loads(canonical_json(cfg)), sort_keys=True)
    assert block_yaml.load(text) == cfg


@pytest.mark.parametrize("text", [
    "a: |\n  block\n",  # block scalar
    "a: long plain\n  continued\n",  # wrapped scalar
    "a:\n- b: 1\n  c: 2\n",  # mapping in a sequence
    "a:\n- - 1\n",  # nested sequence
    "a: &x 1\nb: *x\n",  # anchor / alias
    "---\na: 1\n",  # document marker
    "a: b: c\n",  # invalid YAML
    "a:\n\tb: 1\n",  # tab
    "",  # empty
])
def test_outside_the_subset_returns_none(text):
    assert block_yaml.load(text) is None


def test_hand_edits_with_comments():
    text = "# my run\nmodel:\n  size: B  # base\n  depth: 12\nseed: 3\n"
    assert block_yaml.load(text) == yaml.safe_load(text) == {"model": {"size": "B", "depth": 12}, "seed": 3}
