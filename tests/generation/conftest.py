"""The tiny official 4M-7 checkpoint, its WordPiece tokenizer and the generations the official sampler made with it."""
from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load_file
from tokenizers import Tokenizer

from fourm.generation import build_chained_generation_schedules, init_empty_target_modality, init_full_input_modality
from fourm.models.checkpoint import load_pretrained



class Recorded:
    """The generation fixture: per case its call, expanded schedule and outputs."""

    def __init__(self, root):
        path = root / "tiny_4m7_generation.safetensors"
        self.tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            self.meta = f.metadata()
        self.model = load_pretrained(root / "tiny_4m7.safetensors").eval()
        self.tokenizer = Tokenizer.from_file(str(root / "text_tokenizer_4m_wordpiece_30k.json"))

    def call(self, case: str) -> dict:
        return json.loads(self.meta[f"{case}.call"])

    def schedule(self, case: str) -> list[dict]:
        return build_chained_generation_schedules(modality_info=self.model.modality_info, **self.call(case)["schedule_kwargs"])

    def inputs(self, case: str) -> dict:
        """The recorded starting mod_dict: the RGB batch as a full input, each target empty."""
        kw = self.call(case)["schedule_kwargs"]
        mod_dict = {"rgb@224": {"tensor": self.tensors["rgb"].clone()}}
        init_full_input_modality(mod_dict, self.model.modality_info, "rgb@224", "cpu")
        for domain, n in zip(kw["target_domains"], kw["tokens_per_target"]):
            init_empty_target_modality(mod_dict, self.model.modality_info, domain, 2, n, "cpu")
        return mod_dict

    def outputs(self, case: str) -> dict[tuple[str, str], object]:
        prefix = f"{case}.out."
        return {tuple(k[len(prefix):].rsplit(".", 1)): v for k, v in self.tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="package")
def recorded(official_fixture_dir) -> Recorded:
    return Recorded(official_fixture_dir)
