"""Config fields shared by the recipes that train a causal LM with the HF Trainer.

A recipe's ``Config`` subclasses these and adds its own keys, so the same key means the same
thing in every recipe. Defaults follow the embedded model and data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Optional, Union

from recipekit import models, secrets, tracking
from recipekit.config import option

POLYNOMIAL_LR_END = 1e-7  # where transformers' polynomial schedule ends (its default)
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup", "inverse_sqrt"]
Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]


@dataclass
class ModelOptions:
    model_name: str = option(models.EMBEDDED_MODEL, help="embedded alias (smollm2-135m-instruct, "
                             "tiny-random-llama), local checkpoint dir or Hub model id")
    trust_remote_code: bool = option(False, help="run modelling code shipped with a Hub model; off by default")
    use_auth_token: Optional[str] = option(None, help="env var name or file path holding a Hub token "
                                           "(never the token itself)")
    load_in_4bit: bool = option(False, help="QLoRA: load the base model in bitsandbytes 4-bit (nf4)")
    load_in_8bit: bool = option(False, help="load the base model in bitsandbytes 8-bit")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = option(
        "sdpa", help="attention kernel")
    default_chat_template: Optional[Literal["plain", "chatml"]] = option(
        "plain", help="chat template for a tokenizer that has none (base models): plain (### Question / ### Answer "
        "headings) or chatml (<|im_start|> markers); null = chat data needs the tokenizer's own")

    def may_load_quantized(self) -> bool:
        """Whether this process may load a model through bitsandbytes (beyond what model_name's config says)."""
        return self.load_in_4bit or self.load_in_8bit

    def check_model(self) -> list[str]:
        problems = models.check_name("model_name", self.model_name)
        problems += secrets.check_reference("use_auth_token", self.use_auth_token)
        if self.load_in_4bit and self.load_in_8bit:
            problems.append("load_in_4bit: cannot be combined with load_in_8bit; pick one")
        return problems


@dataclass
class LoraOptions:
    use_peft: bool = option(True, help="train a LoRA adapter instead of all weights")
    peft_lora_r: int = option(16, help="LoRA rank", min=1, max=4096)
    peft_lora_alpha: int = option(32, help="LoRA alpha (scale = alpha / r)", min=1)
    peft_lora_dropout: float = option(0.0, help="dropout on the LoRA input", min=0.0, max=0.9)
    peft_target_modules: Union[Literal["all-linear"], list[str]] = option(
        "all-linear", help="modules that get adapters: all-linear or a list of names (q_proj, v_proj, ...)")
    peft_top_layers: Optional[int] = option(None, help="adapt only the top N decoder layers; backprop then "
                                            "stops below them, which is faster; null = every layer", min=1)
    merge_adapter: bool = option(True, help="also export base+adapter merged into one model under merged/")

    def check_lora(self, quantized: bool) -> list[str]:
        problems = []
        if quantized and not self.use_peft:
            problems.append("use_peft: a 4-bit/8-bit model can only be trained with LoRA (use_peft: true)")
        if isinstance(self.peft_target_modules, list) and not self.peft_target_modules:
            problems.append("peft_target_modules: must not be an empty list")
        return problems


@dataclass
class TrainingOptions:
    output_dir: str = option("outputs/run", help="checkpoints, final model, metrics and logs go here")
    learning_rate: float = option(2e-4, help="peak learning rate", above=0.0, max=1.0)
    batch_size: int = option(8, help="per-device train batch size", min=1, max=65536)
    gradient_accumulation_steps: int = option(1, help="micro-batches per optimizer step", min=1, max=65536)
    num_train_epochs: float = option(1.0, help="epochs over the train split (ignored when max_steps > 0)",
                                     above=0.0, max=100000)
    max_steps: int = option(-1, help="stop after this many optimizer steps; -1 = use num_train_epochs",
                            min=-1, max=10**9)
    min_steps: int = option(0, help="at least this many optimizer steps when scheduling by epochs: a small "
                            "dataset gets more epochs (the last one partial); 0 = off; max_steps > 0 wins",
                            min=0, max=10**9)
    weight_decay: float = option(0.0, help="AdamW weight decay (not applied to norms and biases)", min=0.0, max=10.0)
    lr_scheduler_type: Scheduler = option("cosine", help="learning rate schedule")
    warmup_ratio: float = option(0.0, help="fraction of steps spent warming up", min=0.0, max=1.0)
    max_grad_norm: float = option(1.0, help="gradient clipping norm; 0 disables", min=0.0)
    layer_lr_decay: float = option(1.0, help="layer-wise LR decay: layer i of L gets lr * decay^(L-1-i); 1 = off",
                                   above=0.0, max=1.0)
    lr_multipliers: dict[str, float] = option(default_factory=dict, help="regex on parameter names -> LR "
                                              "multiplier, first match wins (e.g. {lm_head: 0.1})")
    seed: int = option(42, help="seed for weights, data order and dropout", min=0, max=2**32 - 1)
    bf16: bool = option(False, help="train in bfloat16 mixed precision")
    fp16: bool = option(False, help="train in float16 mixed precision (GPU only)")
    gradient_checkpointing: bool = option(False, help="recompute activations to save memory")
    gradient_checkpointing_kwargs: dict[str, bool] = option(default_factory=lambda: {"use_reentrant": False},
                                                            help="passed to gradient_checkpointing_enable")
    logging_steps: int = option(5, help="log loss every N steps", min=1, max=10**9)
    save_steps: int = option(50, help="save a checkpoint every N steps", min=1, max=10**9)
    save_total_limit: Optional[int] = option(2, help="keep only the newest N complete checkpoints; null = all",
                                             min=1, max=10**6)
    resume: bool = option(True, help="resume from the newest complete checkpoint in output_dir, if any; one "
                          "written while training on other data stops the run")
    heap_reuse: bool = option(True, help="on a CPU, glibc's malloc keeps the memory freed while training for "
                              "reuse: faster steps; false gives it back at once, for a lower peak (full fine-tuning)")
    replica_check_steps: int = option(0, help="data-parallel ranks compare their weights at every checkpoint "
                                      "and at the end; N > 0 also every N steps", min=0, max=10**9)
    push_to_hub: bool = option(False, help="upload the final model to the Hub (needs network and a token)")
    hub_model_id: Optional[str] = option(None, help="Hub repo for push_to_hub, e.g. org/name")

    def total_steps(self, steps_per_epoch: float) -> int:
        """The optimizer steps of the run: max_steps where set, else num_train_epochs' worth, at least min_steps."""
        if self.max_steps > 0:
            return self.max_steps
        return max(math.ceil(self.num_train_epochs * steps_per_epoch), self.min_steps)

    def check_training(self) -> list[str]:
        problems = []
        if not self.output_dir.strip():
            problems.append("output_dir: must not be empty")
        if self.bf16 and self.fp16:
            problems.append("bf16: cannot be combined with fp16; pick one")
        if self.push_to_hub and not self.hub_model_id:
            problems.append("hub_model_id: required when push_to_hub is true")
        if self.lr_scheduler_type == "polynomial" and self.learning_rate <= POLYNOMIAL_LR_END:
            problems.append(f"learning_rate: the polynomial schedule decays to {POLYNOMIAL_LR_END}, so the learning "
                            f"rate must be larger; got {self.learning_rate}")
        for pattern, factor in self.lr_multipliers.items():
            try:
                re.compile(pattern)
            except re.error:
                problems.append(f"lr_multipliers: {pattern!r} is not a valid regular expression")
            if not 0 < factor <= 1000:
                problems.append(f"lr_multipliers: multiplier for {pattern!r} must be in (0, 1000], got {factor}")
        return problems


@dataclass
class TrackingOptions:
    """The experiment trackers of the recipes that train with a transformers Trainer (its integrations log)."""

    report_to: Union[Tracker, list[Tracker]] = option(
        "tensorboard", help="experiment trackers: tensorboard (output_dir/runs), wandb, mlflow, trackio, none, or a "
        "list; keys only from their env vars (WANDB_API_KEY, ...); without a server: local stores in output_dir")

    def check_tracking(self) -> list[str]:
        return tracking.check(self.report_to)
