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
