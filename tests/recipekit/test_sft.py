"""recipekit.sft: one SFT run's keys, shared by the sft recipe, sft-zero2 and the optuna search's trials.

Its build/train/save run for real in tests/recipes (test_sft, test_sft_zero2, test_optuna).
"""

from __future__ import annotations

import dataclasses

from recipekit import sft
from tests.conftest import load_recipe


def names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_recipes_that_run_it_share_its_keys_in_its_order():
    keys = names(sft.Options)
    assert names(load_recipe("sft").Config) == keys
    assert names(load_recipe("sft-zero2").Config)[:len(keys)] == keys
    search = load_recipe("optuna")
    assert names(search.Config)[:len(keys)] == keys and list(search.base_values(search.Config())) == keys


def test_its_check_covers_model_training_data_and_lora(tmp_path):
    problems = sft.Options(load_in_4bit=True, use_peft=False, bf16=True, fp16=True,
                           dataset_name=str(tmp_path / "gone.jsonl")).check()
    assert problems == ["bf16: cannot be combined with fp16; pick one",
                        f"dataset_name: file not found: {tmp_path / 'gone.jsonl'}",
                        "use_peft: a 4-bit/8-bit model can only be trained with LoRA (use_peft: true)"]
