"""Bad schedules fail with one sentence naming the modality and the fix, before any forward pass."""
from __future__ import annotations

import pytest

from fourm.generation import GenerationSampler, ScheduleError, build_chained_generation_schedules


def _kwargs(**over):
    kw = dict(cond_domains=["rgb@224"], target_domains=["tok_depth@224"], tokens_per_target=[196],
              autoregression_schemes=["maskgit"], decoding_steps=[4], token_decoding_schedules=["cosine"],
              temps=[1.0], temp_schedules=["constant"], cfg_scales=[1.0], cfg_schedules=["constant"])
    kw.update(over)
    return kw


class _NoForward(GenerationSampler):
    def _encode(self, mod_dict):
        raise AssertionError("a forward pass ran before the schedule was checked")


@pytest.fixture()
def sampler(recorded):
    return _NoForward(recorded.model)


def test_maskgit_on_a_caption_names_the_scheme_to_use(recorded):
    with pytest.raises(ScheduleError, match=r"caption.*sequence.*'autoregressive'"):
        build_chained_generation_schedules(modality_info=recorded.model.modality_info, **_kwargs(
            target_domains=["caption"], tokens_per_target=[64]))


def test_autoregressive_on_a_token_grid_is_refused(recorded):
    with pytest.raises(ScheduleError, match=r"tok_depth@224 is a token grid.*'maskgit' or 'roar'"):
        build_chained_generation_schedules(modality_info=recorded.model.modality_info, **_kwargs(
            autoregression_schemes=["autoregressive"]))


def test_more_tokens_than_the_modality_has(recorded):
    with pytest.raises(ScheduleError, match=r"tokens_per_target=300 exceeds the 196 tokens tok_depth@224 has"):
        build_chained_generation_schedules(modality_info=recorded.model.modality_info, **_kwargs(tokens_per_target=[300]))


def test_an_int_cfg_scale_asks_for_a_float(recorded):
    with pytest.raises(ScheduleError, match=r"cfg scale 3 \(int\) must be a float; pass 3\.0"):
        build_chained_generation_schedules(modality_info=recorded.model.modality_info, **_kwargs(cfg_scales=[3]))


def test_lists_of_the_wrong_length(recorded):
    with pytest.raises(ScheduleError, match=r"one entry per target"):
        build_chained_generation_schedules(**_kwargs(temps=[1.0, 0.5]))


def test_target_without_a_decoder_fails_before_any_forward(recorded, sampler):
    schedule = [dict(target_domain="rgb@224", scheme="maskgit", num_tokens=196, temperature=1.0, cfg_scale=1.0,
                     cfg_cond_domains=[])]
    with pytest.raises(ScheduleError, match=r"no decoder for 'rgb@224'; it generates \['caption', 'det'"):
        sampler.generate(recorded.inputs("maskgit_sampled"), schedule)


def test_a_schedule_decoding_more_than_is_left_fails_before_any_forward(recorded, sampler):
    schedule = recorded.schedule("maskgit_sampled")
    schedule[0] = {**schedule[0], "num_tokens": 150}
    with pytest.raises(ScheduleError, match=r"more tokens of tok_normal@224 than the 196 it has left"):
        sampler.generate(recorded.inputs("maskgit_sampled"), schedule)


def test_an_int_cfg_scale_in_a_handmade_schedule_fails_before_any_forward(recorded, sampler):
    schedule = [{**s, "cfg_scale": 3} for s in recorded.schedule("guided_greedy")]
    with pytest.raises(ScheduleError, match=r"cfg scale 3 \(int\) must be a float; pass 3\.0"):
        sampler.generate(recorded.inputs("guided_greedy"), schedule)


def test_a_caption_without_a_text_tokenizer(recorded, sampler):
    with pytest.raises(ScheduleError, match=r"sequence caption needs text_tokenizer="):
        sampler.generate(recorded.inputs("caption_sampled_topp"), recorded.schedule("caption_sampled_topp"))


def test_unknown_temperature_schedule_and_malformed_onex(recorded):
    with pytest.raises(ScheduleError, match=r"unknown temperature schedule 'cubic'"):
        build_chained_generation_schedules(**_kwargs(temp_schedules=["cubic"]))
    with pytest.raises(ScheduleError, match=r"must read onex:\{min_t\}:\{power\}"):
        build_chained_generation_schedules(**_kwargs(temp_schedules=["onex:0.5"]))


def test_cfg_grow_conditioning_adds_each_finished_target(recorded):
    sched = build_chained_generation_schedules(modality_info=recorded.model.modality_info, **_kwargs(
        target_domains=["tok_depth@224", "tok_semseg@224", "caption"], tokens_per_target=[196, 196, 64],
        autoregression_schemes=["maskgit", "roar", "autoregressive"], decoding_steps=[2, 2, None],
        token_decoding_schedules=["linear", "cosine", None], temps=[1.0, 1.0, 0.7],
        temp_schedules=["constant", "onex:0.5:1.0", "constant"], cfg_scales=[1.0, 2.0, 1.5],
        cfg_schedules=["constant"] * 3), cfg_grow_conditioning=True)
    assert [s["cfg_cond_domains"] for s in sched] == [["rgb@224"]] * 2 + [["rgb@224", "tok_depth@224"]] * 2 + [
        ["rgb@224", "tok_depth@224", "tok_semseg@224"]]
    assert [s["num_tokens"] for s in sched] == [98, 98, 98, 98, None]
    assert sched[3]["temperature"] == 0.5  # onex ends at min_t
