"""Loading a tokenizer and a model as the shared options say: precision, quantization, attention kernel."""

from __future__ import annotations

import logging
from typing import Any

from recipekit import distributed
from recipekit.errors import UsageError
from recipekit.schema import ModelOptions, TrainingOptions

log = logging.getLogger("recipekit.loading")

# The chat templates a tokenizer without one gets (``default_chat_template``). Both end every answer with
# the EOS token, so a trained model stops after its answer, and render a prompt as a prefix of the whole.
CHAT_TEMPLATES = {
    "plain": (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{%- elif message['role'] == 'user' %}{{ '### Question:\n' + message['content'] + '\n\n' }}"
        "{%- else %}{{ '### Answer:\n' + message['content'] + eos_token + '\n\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '### Answer:\n' }}{%- endif %}"),
    "chatml": (
        "{%- for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
        "{%- if message['role'] == 'assistant' %}{{ eos_token }}{%- endif %}{{ '\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"),
}


def load_tokenizer(path: str, opts: ModelOptions, token: str | None, chat: bool = False):
    """The tokenizer, with a pad token (the EOS token if it has none) and, if it has no chat template, the one
    ``default_chat_template`` names; it is saved with the model, so the outputs chat the way they were trained.
    ``chat``: the data is chat, so a tokenizer left without a template is a UsageError."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=opts.trust_remote_code, token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template and opts.default_chat_template is not None:
        log.info("the tokenizer of %s has no chat template: using the %s one (default_chat_template)",
                 opts.model_name, opts.default_chat_template)
        tokenizer.chat_template = CHAT_TEMPLATES[opts.default_chat_template]
    if chat and not tokenizer.chat_template:
        raise UsageError(f"default_chat_template: the tokenizer of {opts.model_name!r} has no chat template, which "
                         "chat data needs; set default_chat_template to plain or chatml, or bring prompt/completion "
                         "strings")
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
