"""recipekit.loading: precision and quantization as the options say."""

from __future__ import annotations

from recipekit import loading
from recipekit.schema import ModelOptions, TrainingOptions


def test_quantization_follows_the_options():
    import torch

    assert loading.quantization_config(ModelOptions(), torch.float32) is None
    four = loading.quantization_config(ModelOptions(load_in_4bit=True), torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert loading.quantization_config(ModelOptions(load_in_8bit=True), torch.float32).load_in_8bit


def test_train_dtype_and_a_full_precision_model(tiny_model):
    import torch

    from recipekit import models

    assert loading.train_dtype(TrainingOptions(bf16=True)) == torch.bfloat16
    assert loading.train_dtype(TrainingOptions(fp16=True)) == torch.float16
    assert loading.train_dtype(TrainingOptions()) == torch.float32
    model = loading.load_model(models.resolve(tiny_model), ModelOptions(attn_implementation="eager"),
                               TrainingOptions(bf16=True), None)
    assert model.dtype == torch.float32 and model.config._attn_implementation == "eager"  # autocast does bf16


def base_model_dir(tiny_model, tmp_path):
    """The tiny model as a base model ships it: without a chat template."""
    import shutil

    from recipekit import models

    out = tmp_path / "base"
    shutil.copytree(models.resolve(tiny_model), out, ignore=shutil.ignore_patterns("chat_template.jinja"))
    return str(out)


def test_a_tokenizer_without_a_chat_template_gets_the_configured_one(tiny_model, tmp_path):
    import pytest

    from recipekit import models
    from recipekit.errors import UsageError

    path = base_model_dir(tiny_model, tmp_path)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Check-out?"},
            {"role": "assistant", "content": "11:00."}]
    rendered = {}
    for name in ("plain", "chatml"):
        tokenizer = loading.load_tokenizer(path, ModelOptions(model_name=path, default_chat_template=name), None,
                                           chat=True)
        prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        rendered[name] = tokenizer.apply_chat_template(chat, tokenize=False)
        assert rendered[name].startswith(prompt)  # the prompt is a prefix: training and generation agree
    eos = tokenizer.eos_token
    assert rendered["plain"] == f"Be brief.\n\n### Question:\nCheck-out?\n\n### Answer:\n11:00.{eos}\n\n"
    assert rendered["chatml"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCheck-out?<|im_end|>\n"
                                  f"<|im_start|>assistant\n11:00.<|im_end|>{eos}\n")
    own = loading.load_tokenizer(models.resolve(tiny_model), ModelOptions(default_chat_template="plain"), None)
    assert "### Question" not in own.chat_template  # a tokenizer's own template is kept
    assert loading.load_tokenizer(path, ModelOptions(default_chat_template=None), None).chat_template is None
    with pytest.raises(UsageError, match=r"^default_chat_template: the tokenizer of .* has no chat template"):
        loading.load_tokenizer(path, ModelOptions(model_name=path, default_chat_template=None), None, chat=True)
