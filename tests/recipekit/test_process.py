"""recipekit.process: which processes import bitsandbytes and DeepSpeed (tiny-model runs go without them)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from recipekit import models, process
from recipekit.schema import ModelOptions


@pytest.fixture
def library_entries():
    """Put sys.modules' bitsandbytes and deepspeed entries back afterwards: leaving one out is process-wide."""
    saved = {name: sys.modules.pop(name, "absent") for name in ("bitsandbytes", "deepspeed")}
    yield
    for name, module in saved.items():
        sys.modules.pop(name, None)
        if module != "absent":
            sys.modules[name] = module


def is_left_out(package: str) -> bool:
    return package in sys.modules and sys.modules[package] is None


def left_out(**options) -> bool:
    sys.modules.pop("bitsandbytes", None)
    process.leave_out_bitsandbytes(ModelOptions(**options))
    return is_left_out("bitsandbytes")


def test_bitsandbytes_is_left_out_only_where_no_quantized_model_can_load(library_entries, tmp_path):
    plain, quantized = tmp_path / "plain", tmp_path / "quantized"
    for path, config in ((plain, {"model_type": "llama"}),
                         (quantized, {"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes"}})):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))

    assert left_out(model_name=models.TINY_MODEL) and left_out(model_name=models.EMBEDDED_MODEL)
    assert left_out(model_name=str(plain))
    with pytest.raises(ImportError):
        import bitsandbytes  # noqa: F401
    assert importlib.util.find_spec("bitsandbytes") is None  # how peft and transformers ask

    assert not left_out(model_name=models.TINY_MODEL, load_in_4bit=True)
    assert not left_out(model_name=models.TINY_MODEL, load_in_8bit=True)
    assert not left_out(model_name=str(quantized))  # saved quantized: loading it needs bitsandbytes
    assert not left_out(model_name="HuggingFaceTB/SmolLM2-135M")  # a Hub model's config is not at hand
    assert importlib.util.find_spec("bitsandbytes") is not None


def test_a_search_that_may_sample_quantization_or_another_model_keeps_it(library_entries):
    from tests.conftest import load_recipe

    search = load_recipe("optuna")
    for key, spec in (("load_in_4bit", {"choices": [False, True]}), ("model_name", {"choices": ["a", "b"]})):
        sys.modules.pop("bitsandbytes", None)
        process.leave_out_bitsandbytes(search.Config(model_name=models.TINY_MODEL, search_space={key: spec}))
        assert "bitsandbytes" not in sys.modules
    process.leave_out_bitsandbytes(search.Config(model_name=models.TINY_MODEL))  # the default space: neither
    assert sys.modules["bitsandbytes"] is None


def test_deepspeed_is_left_out_unless_the_recipe_runs_it(library_entries):
    from tests.conftest import load_recipe

    for recipe, runs_deepspeed in (("sft", False), ("dpo", False), ("sft-zero2", True)):
        sys.modules.pop("deepspeed", None)
        process.leave_out_deepspeed(load_recipe(recipe).Config())
        assert is_left_out("deepspeed") is not runs_deepspeed, recipe
    assert importlib.util.find_spec("deepspeed") is not None  # sft-zero2's process still finds it


@pytest.mark.parametrize("rank", ["0", "1"])
def test_rank_zero_logs_info_and_every_other_rank_only_warnings_naming_itself(rank):
    import os
    import subprocess

    script = ("import logging, warnings\nfrom recipekit import process\nprocess.setup_logging()\n"
              "logging.getLogger('demo').info('progress')\nlogging.getLogger('demo').warning('disk low')\n"
              "warnings.warn('old option')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "RANK": rank})
    lines = result.stderr.splitlines()
    if rank == "0":
        assert [line[9:] for line in lines if "demo:" in line] == ["INFO demo: progress", "WARNING demo: disk low"]
    else:
        assert [line[9:] for line in lines if "demo:" in line] == ["rank 1 WARNING demo: disk low"]
        assert [line[9:44] for line in lines if "old option" in line] == ["rank 1 WARNING py.warnings: <string"]
