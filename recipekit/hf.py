"""Building blocks on top of transformers/peft that several recipes share.

Each function takes the shared option dataclasses from ``recipekit.schema``, so a recipe
that uses them gets identical behaviour for identical keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from recipekit import distributed, models, secrets
from recipekit.errors import UsageError
from recipekit.schema import LoraOptions, ModelOptions, TrainingOptions

log = logging.getLogger("recipekit")
FINAL_DIR = "model"
MERGED_DIR = "merged"
IGNORE_INDEX = -100  # label value the loss skips


def setup_logging() -> None:
    level = logging.INFO if distributed.is_main() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import about optional CPU kernels it downloads from a hub; irrelevant offline.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def leave_out_bitsandbytes(opts: ModelOptions) -> None:
    """Hide bitsandbytes from imports in a process that never loads a quantized model.

    peft imports it whenever it is installed, and bitsandbytes wraps its CPU kernels in
    torch.compile at import, which loads torch's dynamo and inductor: 1.5 s of CPU in every
    process, every rank. peft and transformers then see it as not installed. A checkpoint saved
    quantized needs it, so a Hub model (whose config is not at hand) keeps it too.
    """
    if not opts.may_load_quantized() and models.saved_unquantized(opts.model_name):
        import_as_absent("bitsandbytes")


def leave_out_deepspeed(cfg: Any) -> None:
    """Hide DeepSpeed from imports unless the recipe's Config sets ``uses_deepspeed``.

    accelerate imports it whenever it is installed, just to recognise a DeepSpeed engine: some 400
    modules, 0.6 s of CPU in every process and rank (1.1 s before their bytecode is cached).
    """
    if not getattr(cfg, "uses_deepspeed", False):
        import_as_absent("deepspeed")


def import_as_absent(package: str) -> None:
    """Make ``package`` look not installed to this process (unless it is imported already)."""
    sys.modules.setdefault(package, None)  # a None entry makes find_spec and import say "absent"


def hub_token(opts: ModelOptions) -> str | None:
    return secrets.read_secret("use_auth_token", opts.use_auth_token)


def check_hub_reachable(opts: TrainingOptions, token: str | None) -> None:
    """Fail before training, not after it, when the model or push_to_hub needs a Hub that cannot be reached."""
    name = getattr(opts, "model_name", None)
    if name is not None and models.is_hub_id(name):
        from huggingface_hub import hf_hub_download

        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # its warning about the failed request would repeat the error below
        try:
            hf_hub_download(name, "config.json", token=token)  # from the local Hub cache when offline
        except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors all mean the same here
            raise UsageError(f"model_name: {name!r} is neither an embedded alias ({', '.join(models.ALIASES)}) "
                             f"nor a local checkpoint, and no Hub model by that name can be reached "
                             f"({type(exc).__name__})") from None
        finally:
            hub_log.setLevel(level)
    if not opts.push_to_hub:
        return
    if token is None:
        raise UsageError("push_to_hub: needs use_auth_token (an env var name or file holding a Hub token)")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami(token=token)
    except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors all mean the same here
        raise UsageError(f"push_to_hub: cannot reach the Hugging Face Hub ({type(exc).__name__}); "
                         "set push_to_hub: false or run with network access and a valid token") from None


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


def load_causal_lm(path: str, opts: ModelOptions, train: TrainingOptions, token: str | None):
    import torch
    from transformers import AutoModelForCausalLM

    quant = quantization_config(opts, train_dtype(train))
    kwargs: dict[str, Any] = dict(trust_remote_code=opts.trust_remote_code, token=token,
                                  attn_implementation=opts.attn_implementation,
                                  dtype=train_dtype(train) if quant else torch.float32)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": distributed.local_rank()}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=train.gradient_checkpointing_kwargs)
    return model


def lora_config(lora: LoraOptions, model, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    targets: Any = lora.peft_target_modules
    layers = None
    if lora.peft_top_layers is not None:
        num_layers = model.config.get_text_config().num_hidden_layers
        layers = list(range(max(0, num_layers - lora.peft_top_layers), num_layers))
        if targets == "all-linear":  # peft needs explicit names to restrict adapters to some layers
            targets = decoder_linear_names(model)
    return LoraConfig(r=lora.peft_lora_r, lora_alpha=lora.peft_lora_alpha, lora_dropout=lora.peft_lora_dropout,
                      target_modules=targets, layers_to_transform=layers, bias="none", task_type=task_type)


def decoder_linear_names(model) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (q_proj, ..., down_proj)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and re.search(r"\.layers\.\d+\.", name)})


def trainer_args(train: TrainingOptions, eval_batch_scale: int = 1) -> dict[str, Any]:
    """TrainingArguments keywords that follow directly from the shared options.

    Evaluation batches are ``eval_batch_scale`` times the training batch: they keep no activations
    for a backward, so a recipe whose evaluation holds no full-vocabulary logits can take larger ones.
    """
    import torch

    # The TensorBoard callback reads its directory from this env var (default: ./runs, even for eval).
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(train.output_dir) / "runs")
    return dict(use_cpu=not torch.cuda.is_available(),
        output_dir=train.output_dir, learning_rate=train.learning_rate,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size * eval_batch_scale,
        gradient_accumulation_steps=train.gradient_accumulation_steps, num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps, weight_decay=train.weight_decay, lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio, max_grad_norm=train.max_grad_norm, seed=train.seed, data_seed=train.seed,
        bf16=train.bf16, fp16=train.fp16, activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs=train.gradient_checkpointing_kwargs, logging_steps=train.logging_steps,
        logging_first_step=True, save_strategy="steps", save_steps=train.save_steps,
        save_total_limit=train.save_total_limit, eval_strategy="no", report_to=["tensorboard"],
        push_to_hub=False, disable_tqdm=True,
        ddp_find_unused_parameters=False, dataloader_pin_memory=False,
    )


@contextlib.contextmanager
def generation_view(model, opts: ModelOptions, adapter: bool):
    """The model as generation should see it, quickly: LoRA off for the base model's answers,
    or merged into the weights (undone afterwards) so generation does not pay for the adapter."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield model
    elif not adapter:
        with model.disable_adapter():
            yield model
    elif opts.load_in_4bit or opts.load_in_8bit:  # quantized weights cannot absorb the adapter
        yield model
    else:
        model.merge_adapter()
        try:
            yield model
        finally:
            model.unmerge_adapter()


def param_groups(model, train: TrainingOptions) -> list[dict[str, Any]] | None:
    """AdamW parameter groups for layer-wise LR decay and regex LR multipliers; None when neither is set."""
    if train.layer_lr_decay == 1.0 and not train.lr_multipliers:
        return None
    num_layers = getattr(model.config, "num_hidden_layers", None) or 1
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        layer = re.search(r"\.layers\.(\d+)\.", name)
        if layer:
            scale *= train.layer_lr_decay ** (num_layers - 1 - int(layer.group(1)))
        elif "embed" in name:
            scale *= train.layer_lr_decay ** num_layers
        for pattern, factor in train.lr_multipliers.items():
            if re.search(pattern, name):
                scale *= factor
                break
        no_decay = param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        groups.setdefault((scale, no_decay), []).append(param)
    return [{"params": params, "lr": train.learning_rate * scale, "weight_decay": 0.0 if no_decay
             else train.weight_decay} for (scale, no_decay), params in groups.items()]


def make_optimizer(model, train: TrainingOptions):
    import torch

    groups = param_groups(model, train)
    return None if groups is None else torch.optim.AdamW(groups, lr=train.learning_rate)


def save_final(trainer, tokenizer, output_dir: str, base_path: str, opts: ModelOptions, lora: LoraOptions,
               token: str | None) -> dict[str, str]:
    """Save the model (or adapter) + tokenizer to model/, and for adapters a merged copy to merged/."""
    final = Path(output_dir) / FINAL_DIR
    trainer.save_model(str(final))
    saved = {"model": str(final)}
    if distributed.is_main():
        tokenizer.save_pretrained(final)
        if lora.use_peft and lora.merge_adapter:
            saved["merged"] = str(merge_adapter(base_path, final, Path(output_dir) / MERGED_DIR, opts, token))
    distributed.barrier()
    return saved


def merge_adapter(base_path: str, adapter_dir: Path, out: Path, opts: ModelOptions, token: str | None) -> Path:
    """Merge a LoRA adapter into a fresh full-precision copy of its base (also right for QLoRA)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, token=token,
                                                trust_remote_code=opts.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    load_tokenizer(str(adapter_dir), opts, token).save_pretrained(out)
    return out


class PlainLossOnCPUMixin:
    """Mix into a TRL trainer: on CPU, compute the loss with the model's own forward.

    TRL replaces the LM head with a chunked log-prob kernel that also computes entropy and top-1
    metrics; on CPU its backward made a training step about 2.5x slower than the plain forward
    (measured with SmolLM2-135M, LoRA, 512 packed tokens). On GPU the chunked kernel is kept: it
    never materializes the full logits, which matters for memory at long sequence lengths.

    On CPU the LM head also runs only at positions whose next token is trained on (the replies,
    not the prompts): the loss is the same, the vocabulary-sized matmul shrinks to those rows.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from transformers import Trainer

        if self.args.device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # use_cache=False as TRL sets it: with a cache, transformers skips the packed-documents mask and
        # every token of a packed row would attend to the documents before it.
        inputs = {**{k: v for k, v in inputs.items() if k != "completion_mask"}, "use_cache": False}
        if return_outputs or inputs.get("labels") is None or self.label_smoother is not None \
                or self.compute_loss_func is not None:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return self._loss_on_trained_positions(model, inputs, num_items_in_batch)

    def _loss_on_trained_positions(self, model, inputs, num_items_in_batch):
        """Trainer.compute_loss's causal-LM loss, computing logits only where a label follows."""
        import torch
        from transformers.loss.loss_utils import fixed_cross_entropy

        labels = inputs.pop("labels")
        targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]  # as ForCausalLMLoss shifts
        keep = torch.nonzero((targets != IGNORE_INDEX).any(dim=0)).flatten()
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits.float()
        per_item = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = fixed_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1), per_item)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and per_item is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss


def document_bounds(positions) -> list[int]:
    """Start offsets of the packed documents in one row of position ids, plus the row length. A
    document starts where the positions stop counting up by one: the rule transformers' packed-sequence
    mask follows."""
    import torch

    restarts = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return [0, *restarts.tolist(), positions.numel()]


class _DocumentAttention:
    """SDPA that attends within each packed document instead of masking one long row.

    A padding-free batch is one row of several documents whose position_ids restart at 0; plain
    SDPA then runs over the whole row with a block-diagonal mask, so its cost grows with the
    square of the row length. This runs causal SDPA once per document instead: the same result
    (the mask allows exactly these blocks), at the cost of the documents' squared lengths. Used
    on CPU only; anything else (GPU, generation with a cache, padded batches, tracing) goes to
    the stock SDPA function unchanged.
    """

    def __init__(self, fallback):
        self.fallback = fallback
        self._last: tuple[Any, Any, Any] | None = None  # (position_ids, mask, bounds) of the current forward

    def bounds(self, position_ids, mask) -> list[int] | None:
        """Document start offsets plus the row length; None unless the mask is exactly the packed-documents one."""
        import torch

        if self._last is not None and self._last[0] is position_ids and self._last[1] is mask:
            return self._last[2]
        bounds = document_bounds(position_ids[0])
        bounds = bounds if len(bounds) > 2 and mask is not None else None
        if bounds is not None:
            lengths = torch.tensor([end - start for start, end in zip(bounds, bounds[1:])])
            document = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
            expected = (document[:, None] == document[None, :]).tril()
            if mask.dtype != torch.bool or mask.shape[-2:] != expected.shape or not torch.equal(mask[0, 0], expected):
                bounds = None  # the mask also hides padding or something else: leave it to SDPA
        self._last = (position_ids, mask, bounds)
        return bounds

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                 **kwargs):
        import torch
        from transformers.integrations.sdpa_attention import repeat_kv

        position_ids = kwargs.get("position_ids")
        usable = (query.device.type == "cpu" and position_ids is not None and query.shape[0] == 1
                  and position_ids.shape[0] == 1 and query.shape[2] == key.shape[2] == position_ids.shape[-1]
                  and not torch.jit.is_tracing() and not torch.compiler.is_compiling())
        bounds = self.bounds(position_ids, attention_mask) if usable else None
        if bounds is None:
            return self.fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                 is_causal=is_causal, **kwargs)
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        with self.kernel_for(query):
            pieces = [torch.nn.functional.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
                for a, b in zip(bounds, bounds[1:])]
        return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None

    @staticmethod
    def kernel_for(query):
        """The math kernel where a backward follows, the default (flash) kernel elsewhere.

        For documents of tens to hundreds of tokens, the CPU flash kernel's backward took about
        twice as long as the math kernel's; its forward alone is the faster one.
        """
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if torch.is_grad_enabled() and query.requires_grad:
            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()


def use_document_attention() -> None:
    """Route ``attn_implementation="sdpa"`` through _DocumentAttention in this process (idempotent)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("sdpa", _DocumentAttention(sdpa_attention_forward))
