"""Any-to-any generation with 4M models (the official generation API): schedules, mod_dict helpers, the sampler."""
from fourm.generation.modality_dicts import (
    custom_text,
    empty_img_modality,
    empty_seq_emb_modality,
    empty_seq_modality,
    expand_to_batch,
    init_empty_target_modality,
    init_full_input_modality,
)
from fourm.generation.sampler import GenerationSampler
from fourm.generation.schedules import (
    ScheduleError,
    build_chained_generation_schedules,
    cosine_schedule,
    linear_schedule,
    linear_temp_schedule,
    onex_temp_schedule,
)

__all__ = [
    "GenerationSampler", "ScheduleError", "build_chained_generation_schedules", "cosine_schedule", "linear_schedule",
    "linear_temp_schedule", "onex_temp_schedule", "init_empty_target_modality", "init_full_input_modality",
    "custom_text", "expand_to_batch", "empty_img_modality", "empty_seq_modality", "empty_seq_emb_modality",
]
