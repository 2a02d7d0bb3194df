"""A fast reader for the block-style YAML that ``fourm.runs`` writes as ``config.yaml``.

``yaml.safe_dump`` writes nested mappings as indented ``key: value`` lines and lists as ``- item`` lines. Reading that
with PyYAML costs ~1 ms per config even with libyaml (object construction and tag resolution run in Python), which is
most of the time of collecting 10,000 runs. Here the line structure is parsed directly, and every scalar (key or value
text) is handed to PyYAML itself, cached, so ``"1e-4"``, ``'on'``, ``2026-01-01`` or quoted strings mean exactly what
they mean to ``yaml.safe_load``.

Anything outside that subset — block scalars (``|``, ``>``), scalars wrapped onto several lines, sequences of mappings,
nested sequences, anchors/aliases/tags, documents markers, tabs — makes :func:`load` return ``None``; the caller then
uses ``yaml.safe_load``. The fast path never guesses.
"""
from __future__ import annotations

from typing import Any

import yaml

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

_CACHE: dict[str, Any] = {}
_CACHE_MAX = 200_000
_BAD_START = ("?", "[", "{", "&", "*", "!", "%", "@", "`", "|", ">", "-", "#", ":")
_BAD_VALUE_START = ("&", "*", "!", "|", ">", "%", "@", "`")


class _NotBlockYaml(Exception):
    pass


def _scalar(text: str) -> Any:
    """What ``yaml.safe_load`` makes of one scalar (or one-line flow collection); immutable results are cached."""
    try:
        return _CACHE[text]
    except KeyError:
        pass
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        raise _NotBlockYaml from None
    if isinstance(value, (dict, list)):
        return value  # mutable: never shared between configs
    if len(_CACHE) < _CACHE_MAX:
        _CACHE[text] = value
    return value


def load(text: str) -> dict | None:
    """The mapping ``yaml.safe_load(text)`` returns, or ``None`` when ``text`` is not in the simple block subset."""
    try:
        return _parse(text)
    except _NotBlockYaml:
        return None


_SKIP, _ITEM, _KEY_VALUE, _KEY_BLOCK = range(4)
_LINES: dict[str, tuple] = {}  # configs of one sweep share most lines: tokenise each distinct line once


def _tokenize(raw: str) -> tuple:
    """(kind, indent, key, value) of one line; raises _NotBlockYaml outside the subset."""
    stripped = raw.lstrip(" ")
    if not stripped or stripped.startswith("#"):
        return (_SKIP, 0, None, None)
    if "\t" in raw:
        raise _NotBlockYaml
    indent = len(raw) - len(stripped)
    if stripped.startswith("- ") or stripped == "-":
        item = stripped[2:].strip()
        if not item or item.startswith(("- ", "#")) or item == "-" or item.startswith(_BAD_VALUE_START):
            raise _NotBlockYaml
        if not item.startswith(("'", '"')) and (": " in item or item.endswith(":")):
            raise _NotBlockYaml  # a mapping inside a sequence
        return (_ITEM, indent, None, _value(item))
    if stripped.startswith(_BAD_START):
        raise _NotBlockYaml
    if stripped.endswith(":"):
        key_text, value_text = stripped[:-1], ""
    else:
        cut = stripped.find(": ")
        if cut < 0:
            raise _NotBlockYaml  # a wrapped scalar's continuation, a document marker, ...
        key_text, value_text = stripped[:cut], stripped[cut + 2:].strip()
    if " #" in key_text or not key_text.strip() or key_text == "<<":  # "<<" is YAML's merge key
        raise _NotBlockYaml
    key = _scalar(key_text)
    if isinstance(key, (dict, list)):
        raise _NotBlockYaml
    if not value_text or value_text.startswith("#"):
        return (_KEY_BLOCK, indent, key, None)
    if value_text.startswith(_BAD_VALUE_START):
        raise _NotBlockYaml
    return (_KEY_VALUE, indent, key, _value(value_text))


def _value(text: str) -> Any:
    value = _scalar(text)
    if isinstance(value, dict) != text.startswith("{") or isinstance(value, list) != text.startswith("["):
        raise _NotBlockYaml  # e.g. "a: b: c", which YAML refuses
    return value


def _parse(text: str) -> dict | None:
    root: dict = {}
    stack: list[tuple[int, Any]] = [(0, root)]  # (indent, container)
    pending: tuple[int, dict, Any] | None = None  # a "key:" line whose block has not started yet
    seen = False
    lines = _LINES
    for raw in text.splitlines():
        tok = lines.get(raw)
        if tok is None:
            tok = _tokenize(raw)
            if not isinstance(tok[3], (dict, list)) and len(lines) < _CACHE_MAX:
                lines[raw] = tok
        kind, indent, key, value = tok
        if kind == _SKIP:
            continue
        seen = True
        if pending is not None:
            p_indent, p_dict, p_key = pending
            pending = None
            if kind == _ITEM and indent >= p_indent:  # PyYAML writes sequences at the key's own indent
                p_dict[p_key] = []
                stack.append((indent, p_dict[p_key]))
            elif kind != _ITEM and indent > p_indent:
                p_dict[p_key] = {}
                stack.append((indent, p_dict[p_key]))
            else:
                p_dict[p_key] = None
        if kind == _ITEM:
            while stack[-1][0] > indent:
                stack.pop()
            top_indent, top = stack[-1]
            if top_indent != indent or type(top) is not list:
                raise _NotBlockYaml
            top.append(value)
            continue
        while stack[-1][0] > indent or (stack[-1][0] == indent and type(stack[-1][1]) is list):
            stack.pop()
        top_indent, top = stack[-1]
        if top_indent != indent or type(top) is not dict:
            raise _NotBlockYaml
        if kind == _KEY_BLOCK:
            pending = (indent, top, key)
        else:
            top[key] = value
    if pending is not None:
        pending[1][pending[2]] = None
    return root if seen else None
