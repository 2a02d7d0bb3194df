"""``torch_threads``: run a block with a given torch intra-op thread count, then put the previous count back.

Library functions that pin threads (the tokenizers default to 1 to avoid OpenMP spinning on shared CPUs) must not
leave the whole process single-threaded for whatever runs next in it (the demo pretrains right after encoding).
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (``None``/0: unchanged), restored on exit."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
