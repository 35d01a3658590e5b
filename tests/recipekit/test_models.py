"""recipekit.models: embedded aliases, the tiny test model, and name checks."""

from pathlib import Path

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


def test_validation_caches_the_embedded_config_and_tokenizer_without_converting_any_weight(tmp_path, monkeypatch):
    """`--check` reads only config.json and the tokenizer; the conversion itself is left for training."""
    from transformers import AutoConfig

    shared_tokenizer = models.prepare_tokenizer()
    monkeypatch.setenv("RECIPES_CACHE", str(tmp_path))
    models.cache_dir().mkdir(parents=True)
    models.tokenizer_dir().symlink_to(shared_tokenizer)  # converted once per machine; reused here

    config_only = Path(models.resolve(models.EMBEDDED_MODEL, weights=False))
    assert config_only == models.config_dir() and not models.embedded_dir().exists()
    assert not list(config_only.glob("*.safetensors")) and not list(config_only.glob("*.bin"))
    config = AutoConfig.from_pretrained(config_only)
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("llama", 30, 49152)
    assert config.tie_word_embeddings and config.architectures == ["LlamaForCausalLM"]
    assert "quantization_config" not in (config_only / "config.json").read_text()  # no GGUF marker
    for item in shared_tokenizer.iterdir():
        assert (config_only / item.name).read_bytes() == item.read_bytes()

    # Once the weights are converted, validation reads that checkpoint instead.
    models.embedded_dir().mkdir()
    (models.embedded_dir() / "config.json").write_text((config_only / "config.json").read_text())
    assert models.resolve(models.EMBEDDED_MODEL, weights=False) == str(models.embedded_dir())
