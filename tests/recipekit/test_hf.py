"""recipekit.hf: which processes import bitsandbytes (every recipe run on the tiny model goes without it)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from recipekit import hf, models
from recipekit.schema import ModelOptions


@pytest.fixture
def bitsandbytes_entry():
    """Put sys.modules' bitsandbytes entry back afterwards: leaving it out is process-wide."""
    saved = sys.modules.pop("bitsandbytes", "absent")
    yield
    sys.modules.pop("bitsandbytes", None)
    if saved != "absent":
        sys.modules["bitsandbytes"] = saved


def left_out(**options) -> bool:
    sys.modules.pop("bitsandbytes", None)
    hf.leave_out_bitsandbytes(ModelOptions(**options))
    return "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None


def test_bitsandbytes_is_left_out_only_where_no_quantized_model_can_load(bitsandbytes_entry, tmp_path):
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


def test_a_search_that_may_sample_quantization_or_another_model_keeps_it(bitsandbytes_entry):
    from recipekit.entry import import_recipe
    from tests.conftest import REPO

    search = import_recipe(REPO / "recipes" / "optuna" / "search.py")
    for key, spec in (("load_in_4bit", {"choices": [False, True]}), ("model_name", {"choices": ["a", "b"]})):
        sys.modules.pop("bitsandbytes", None)
        hf.leave_out_bitsandbytes(search.Config(model_name=models.TINY_MODEL, search_space={key: spec}))
        assert "bitsandbytes" not in sys.modules
    hf.leave_out_bitsandbytes(search.Config(model_name=models.TINY_MODEL))  # the default space: neither
    assert sys.modules["bitsandbytes"] is None
