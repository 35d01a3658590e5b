"""recipekit.models: embedded aliases, the tiny test model, and name checks."""

from recipekit import models


def test_tiny_model_builds_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = models.make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template  # same tokenizer (and chat template) as the embedded model


def test_prepare_is_idempotent():
    first = models.prepare_tiny()
    mtime = (first / "config.json").stat().st_mtime
    assert models.prepare_tiny() == first and (first / "config.json").stat().st_mtime == mtime


def test_check_name():
    assert models.check_name("model_name", models.EMBEDDED_MODEL) == []
    assert models.check_name("model_name", "HuggingFaceTB/SmolLM2-135M") == []  # a Hub id: checked at load
    assert models.check_name("model_name", "./no/such/dir") == ["model_name: model directory not found: ./no/such/dir"]
