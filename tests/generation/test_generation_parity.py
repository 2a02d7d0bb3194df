"""Generation is token-for-token the official sampler's, through the official API, on every recorded case."""
from __future__ import annotations

import json

import pytest
import torch

from fourm.generation import GenerationSampler, cosine_schedule, linear_schedule, linear_temp_schedule, onex_temp_schedule
CASES = ["chain_greedy", "guided_greedy", "maskgit_sampled", "roar_sampled_topk", "caption_sampled_topp"]


def _generate(recorded, case, **sampler_kw):
    call = recorded.call(case)
    sampler = GenerationSampler(recorded.model, **sampler_kw)
    return sampler.generate(recorded.inputs(case), recorded.schedule(case), top_k=call["top_k"], top_p=call["top_p"],
                            text_tokenizer=recorded.tokenizer, seed=call["seed"])


def _assert_identical(out, expected):
    assert expected, "no recorded outputs"
    for (domain, key), ref in expected.items():
        got = out[domain][key]
        assert got.shape == ref.shape, f"{domain}.{key}: shape {tuple(got.shape)} vs official {tuple(ref.shape)}"
        diff = int((got.to(ref.dtype) != ref).sum())
        assert diff == 0, f"{domain}.{key}: {diff} of {ref.numel()} entries differ from the official sampler"


@pytest.mark.parametrize("case", CASES)
def test_schedule_matches_the_official_expansion(recorded, case):
    rows = [[s["target_domain"], s["scheme"], s["num_tokens"], s["temperature"], s["cfg_scale"], s["cfg_cond_domains"]]
            for s in recorded.schedule(case)]
    assert rows == json.loads(recorded.meta[f"{case}.schedule"])


@pytest.mark.parametrize("case", CASES)
def test_generation_is_identical_to_the_official_sampler(recorded, case):
    """KV cache and batched guidance on: every token and mask as the official code made them."""
    torch.set_num_threads(1)
    _assert_identical(_generate(recorded, case, batch_guidance=True), recorded.outputs(case))


@pytest.mark.parametrize("case", ["guided_greedy", "maskgit_sampled", "roar_sampled_topk", "caption_sampled_topp"])
def test_reference_computation_is_identical_too(recorded, case):
    """Prefix recomputed for every token and guidance as two passes: the official computation, the same tokens."""
    torch.set_num_threads(1)
    _assert_identical(_generate(recorded, case, kv_cache=False, batch_guidance=False), recorded.outputs(case))


def test_sequences_decode_to_the_official_text(recorded):
    out = _generate(recorded, "chain_greedy")
    decoded = json.loads(recorded.meta["chain_greedy.decoded.det"])
    assert [recorded.tokenizer.decode(r.tolist(), skip_special_tokens=False) for r in out["det"]["tensor"]] == decoded


@pytest.mark.parametrize("steps,tokens", [(1, 196), (6, 196), (8, 196), (12, 256), (25, 196), (3, 7)])
def test_pure_schedules_are_the_official_values(recorded, steps, tokens):
    ref = json.loads(recorded.meta["pure_schedules"])
    cos = cosine_schedule(steps, tokens)
    assert cos.tolist() == ref[f"cosine.{steps}.{tokens}"]
    assert cos.sum() == tokens
    assert linear_schedule(steps, tokens).tolist() == ref[f"linear.{steps}.{tokens}"]
    assert linear_temp_schedule(3.0, cos).tolist() == ref[f"linear_temp.3.0.{steps}.{tokens}"]
    assert onex_temp_schedule(3.0, 0.5, cos, power=1.0).tolist() == ref[f"onex_temp.3.0.0.5.1.0.{steps}.{tokens}"]


def test_multi_guidance_with_one_condition_is_classifier_free_guidance(recorded):
    """uncond + w (cond - uncond) with the RGB as the one condition of weight 3 is the recorded cfg-3 generation."""
    inputs = recorded.inputs("guided_greedy")
    schedule = [{**s, "cfg_scale": [3.0]} for s in recorded.schedule("guided_greedy")]
    uncond = {"tok_semseg@224": inputs["tok_semseg@224"]}
    cond = {"rgb@224": inputs["rgb@224"]}
    out = GenerationSampler(recorded.model).generate_multi_guided(uncond, [cond], schedule, text_tokenizer=recorded.tokenizer)
    _assert_identical(out, recorded.outputs("guided_greedy"))
    # a negative weight steers away from the condition: a different generation
    away = [{**s, "cfg_scale": [-1.0]} for s in schedule]
    out_away = GenerationSampler(recorded.model).generate_multi_guided(uncond, [cond], away)
    assert not torch.equal(out_away["tok_semseg@224"]["tensor"], out["tok_semseg@224"]["tensor"])


def test_generate_iter_yields_each_step_and_chains(recorded):
    """One yield per schedule step; a finished target is an input (visible) for the next ones."""
    schedule = recorded.schedule("chain_greedy")
    states = []
    for d in GenerationSampler(recorded.model).generate_iter(recorded.inputs("chain_greedy"), schedule,
                                                              text_tokenizer=recorded.tokenizer):
        states.append((int((~d["tok_depth@224"]["input_mask"]).sum()), d["caption"]["input_mask"].shape[1]))
    assert len(states) == len(schedule) == 8
    decoded_per_step = [s[0] for s in states[:6]]
    assert decoded_per_step == [2 * n for n in (13, 49, 98, 147, 183, 196)]
    assert states[6][1] == 255  # the caption was merged into a plain input sequence
