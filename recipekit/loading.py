"""Loading a tokenizer and a model as the shared options say: precision, quantization, attention kernel."""

from __future__ import annotations

from typing import Any

from recipekit import distributed
from recipekit.schema import ModelOptions, TrainingOptions


def load_tokenizer(path: str, opts: ModelOptions, token: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=opts.trust_remote_code, token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(opts: ModelOptions, compute_dtype):
    if not (opts.load_in_4bit or opts.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if opts.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def train_dtype(train: TrainingOptions):
    import torch

    return torch.bfloat16 if train.bf16 else torch.float16 if train.fp16 else torch.float32


def load_model(path: str, opts: ModelOptions, train: TrainingOptions, token: str | None, masked_lm: bool = False):
    """A causal LM (or, ``masked_lm``, a masked LM) in float32, or quantized and ready for k-bit training."""
    import torch
    import transformers

    quant = quantization_config(opts, train_dtype(train))
    kwargs: dict[str, Any] = dict(trust_remote_code=opts.trust_remote_code, token=token,
                                  attn_implementation=opts.attn_implementation,
                                  dtype=train_dtype(train) if quant else torch.float32)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": distributed.local_rank()}
    auto = transformers.AutoModelForMaskedLM if masked_lm else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(path, **kwargs)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=train.gradient_checkpointing_kwargs)
    return model
