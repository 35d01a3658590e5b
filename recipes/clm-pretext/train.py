"""Continued pretraining on raw text: causal-LM (or masked-LM) pretext with the HF Trainer.

    launcher run recipes/clm-pretext                                  # embedded model + hotel handbook, CPU
    launcher run recipes/clm-pretext --set use_peft=false             # full fine-tuning
    launcher run recipes/clm-pretext --set objective=mlm --set model_name=/models/my-bert
    launcher run recipes/clm-pretext --nproc 2                        # DDP under torchrun
    python recipes/clm-pretext/train.py --config my.yaml --set block_size=512

Every document of a split is tokenized, followed by the EOS token (clm), and the documents are
concatenated into one token stream cut into blocks of exactly `block_size` tokens. The last piece
of each group of 1000 documents that is shorter than a block is dropped, so every block is full,
needs no padding, and the eval loss is an exact per-token mean. Held-out perplexity
(exp of the eval loss) is measured before and after training. Outputs: model/ (adapter or full
model + tokenizer), merged/ (adapter merged into its base), metrics.json, loss.png,
resolved_config.yaml, runs/ (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Literal

from recipekit import (checkpoint, cpu_speedups, data, distributed, entry, evaluate, hub, loading, lora, models,
                       outputs, trainers)
from recipekit.config import option
from recipekit.errors import DataError, UsageError
from recipekit.preemption import StopOnSignal
from recipekit.schema import LoraOptions, ModelOptions, TrackingOptions, TrainingOptions

log = logging.getLogger("recipes.clm_pretext")
RECIPE = "clm-pretext"
PACK_GROUP = 1000  # documents concatenated per packing group (the remainder of each group is dropped)


@dataclass
class TextDataOptions(data.DatasetOptions, data.TextColumnOption):
    dataset_name: str = data.dataset_option("hotel-handbook")
    block_size: int = option(128, help="tokens per packed training/eval block", min=8, max=1 << 20)
    objective: Literal["clm", "mlm"] = option("clm", help="clm: next-token prediction (decoder models); "
                                              "mlm: masked-token prediction (encoder models with a mask token)")
    mlm_probability: float = option(0.15, help="fraction of tokens masked per block (objective: mlm)",
                                    above=0.0, max=0.95)


@dataclass
class Config(TextDataOptions, TrackingOptions, TrainingOptions, LoraOptions, ModelOptions):
    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training() + self.check_tracking()
        problems += self.check_lora(quantized=self.load_in_4bit or self.load_in_8bit) + self.check_data()
        if self.objective == "mlm" and (self.load_in_4bit or self.load_in_8bit):
            key = "load_in_8bit" if self.load_in_8bit else "load_in_4bit"
            problems.append(f"{key}: 4-bit/8-bit loading is supported with objective: clm only")
        return problems


@dataclass
class Blocks:
    train: Any
    eval: Any = None
    counts: dict = dataclasses.field(default_factory=dict)


def main(cfg: Config, check_only: bool) -> None:
    # Validate: config, data, tokenizer and model type are all checked before a model is loaded.
    token, (train_rows, eval_rows) = entry.prepare(cfg, load_text)
    model_path = models.resolve(cfg.model_name, weights=not check_only)
    tokenizer = loading.load_tokenizer(model_path, cfg, token)
    check_model_fits(cfg, model_path, tokenizer, token)
    blocks = make_blocks(train_rows, eval_rows, tokenizer, cfg)
    if check_only:
        return
    train(cfg, blocks, tokenizer, model_path, token, StopOnSignal())


def load_text(cfg: Config, token: str | None):
    """The train split and (when there is one) the eval split, with a non-empty text column."""
    def check_text(rows, key: str, name: str):
        data.require_text_column(rows, "dataset_text_field", cfg.dataset_text_field, name)
        return rows

    train_rows, eval_rows = data.load_splits(cfg, {"dataset_text_field": cfg.dataset_text_field}, token, check_text)
    if eval_rows is None:
        log.warning("no eval split: held-out perplexity will not be measured")
    return train_rows, eval_rows


def check_model_fits(cfg: Config, model_path: str, tokenizer, token: str | None) -> None:
    """The objective needs the matching head (and a mask token for mlm); blocks must fit the positions."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code,
                                                         token=token)
    except Exception as exc:  # noqa: BLE001 - hub, file and parsing errors all mean the same here
        raise UsageError(f"model_name: cannot read the model config of {cfg.model_name!r} "
                         f"({type(exc).__name__})") from None
    problems = []
    custom = bool(getattr(config, "auto_map", None))  # remote code: the auto mappings do not list it
    if cfg.objective == "mlm":
        if tokenizer.mask_token is None:
            problems.append(f"objective: mlm needs a tokenizer with a mask token; {cfg.model_name!r} has none "
                            "(use an encoder such as BERT/RoBERTa, or objective: clm)")
        if not custom and type(config) not in transformers.MODEL_FOR_MASKED_LM_MAPPING:
            problems.append(f"objective: mlm needs a model with a masked-LM head; {config.model_type!r} has none")
    elif not custom and type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        problems.append(f"objective: clm needs a model with a causal-LM head; {config.model_type!r} has none "
                        "(for an encoder use objective: mlm)")
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    if isinstance(positions, int) and cfg.block_size > positions:
        problems.append(f"block_size: {cfg.block_size} is longer than the model's max_position_embeddings "
                        f"({positions})")
    if problems:
        raise UsageError(problems)


def pack(rows, tokenizer, cfg: Config, split: str):
    """Tokenize the documents, append EOS (clm), concatenate and cut into full blocks of block_size.

    Returns the blocks and the number of tokens dropped (each group's remainder shorter than a block).
    """
    column, size = cfg.dataset_text_field, cfg.block_size
    eos = tokenizer.eos_token_id if cfg.objective == "clm" else None
    dropped = [0]

    def encode(batch):
        docs = tokenizer(batch[column], add_special_tokens=True, verbose=False)["input_ids"]
        if eos is not None:
            docs = [ids if ids and ids[-1] == eos else ids + [eos] for ids in docs]
        stream = list(chain.from_iterable(docs))
        usable = len(stream) // size * size
        dropped[0] += len(stream) - usable
        return {"input_ids": [stream[i:i + size] for i in range(0, usable, size)]}

    packed = rows.map(encode, batched=True, batch_size=PACK_GROUP, remove_columns=rows.column_names,
                      keep_in_memory=True, load_from_cache_file=False, desc=f"packing {split}")
    return packed, dropped[0]


def make_blocks(train_rows, eval_rows, tokenizer, cfg: Config) -> Blocks:
    """Pack both splits; each must give at least one full block."""
    blocks, problems = Blocks(train=None), []
    for split, name, rows in (("train", cfg.dataset_name, train_rows),
                              ("eval", cfg.eval_dataset_name or cfg.dataset_name, eval_rows)):
        if rows is None:
            continue
        packed, dropped = pack(rows, tokenizer, cfg, split)
        setattr(blocks, split, packed)
        blocks.counts.update({f"{split}_blocks": len(packed), f"{split}_tokens": len(packed) * cfg.block_size,
                              f"{split}_tokens_dropped": dropped})
        if len(packed) == 0:
            problems.append(f"block_size: the {split} split of {name!r} has {dropped} tokens, fewer than one "
                            f"block of {cfg.block_size}; lower block_size or add text")
    if problems:
        raise DataError(problems)
    log.info("packed into blocks of %d tokens: %s", cfg.block_size,
             ", ".join(f"{key}={value}" for key, value in blocks.counts.items()))
    return blocks


def train(cfg: Config, blocks: Blocks, tokenizer, model_path: str, token: str | None, stop: StopOnSignal) -> dict:
    """Build, measure, train, measure again and save; return the metrics."""
    # Build.
    import transformers

    transformers.set_seed(cfg.seed)  # the adapter's initial weights
    model = loading.load_model(model_path, cfg, cfg, token, masked_lm=cfg.objective == "mlm")
    if cfg.use_peft:
        model = add_adapter(model, cfg)
        if distributed.is_main():
            model.print_trainable_parameters()
    trainer = build_trainer(cfg, blocks, tokenizer, model, stop)

    # Measure the starting point, then train, resuming from the newest complete checkpoint.
    resume_from = checkpoint.resume_point(cfg, blocks.train)
    metrics = {**outputs.run_facts(RECIPE, resume_from, trainer.args.device), "objective": cfg.objective,
               "block_size": cfg.block_size, **blocks.counts}
    metrics.update(trainer.train_from(resume_from, evaluate_first=resume_from is None and blocks.eval is not None))

    # Evaluate and save.
    if blocks.eval is not None:
        # On a resumed run the starting point comes back from the checkpoint's log history.
        before = evaluate.starting_eval(trainer.state.log_history).get("eval_loss")
        after = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss_before=before, perplexity_before=None if before is None else perplexity(before),
                       eval_loss_after=after, perplexity_after=perplexity(after))
        if metrics["perplexity_before"]:
            metrics["perplexity_change"] = metrics["perplexity_after"] / metrics["perplexity_before"] - 1
    metrics.update(outputs.save_final(trainer, tokenizer, cfg.output_dir, model_path, cfg, cfg, token,
                                      masked_lm=cfg.objective == "mlm"))
    outputs.finish(cfg, RECIPE, metrics, trainer.state.log_history, print_summary,
                   title=f"{RECIPE} ({cfg.objective}): {cfg.model_name}")
    hub.push(cfg, trainer.model, tokenizer, token)
    return metrics


def add_adapter(model, cfg: Config):
    from peft import get_peft_model

    if cfg.peft_top_layers is not None and cfg.peft_target_modules == "all-linear" \
            and not lora.decoder_linear_names(model):
        raise UsageError("peft_top_layers: this model has no '.layers.N.' blocks to pick the top layers from; "
                         "set peft_top_layers: null or list peft_target_modules")
    task_type = "CAUSAL_LM" if cfg.objective == "clm" else None  # peft has no masked-LM task type
    return get_peft_model(model, lora.lora_config(cfg, model, task_type=task_type))


def build_trainer(cfg: Config, blocks: Blocks, tokenizer, model, stop: StopOnSignal):
    import transformers

    class Trainer(trainers.RecipeTrainerMixin, transformers.Trainer):
        eval_collator = None

        def get_eval_dataloader(self, eval_dataset=None):
            """mlm: evaluate with a seeded collator restarted each time, so every evaluation masks the same tokens."""
            if self.eval_collator is None:
                return super().get_eval_dataloader(eval_dataset)
            train_collator, self.data_collator = self.data_collator, self.eval_collator
            self.eval_collator.generator = None
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = train_collator

    args = transformers.TrainingArguments(**trainers.arguments(cfg, recipe=RECIPE), label_names=["labels"])
    if cfg.objective == "mlm":
        masking = dict(tokenizer=tokenizer, mlm=True, mlm_probability=cfg.mlm_probability)
        collator = transformers.DataCollatorForLanguageModeling(**masking)
        eval_collator = transformers.DataCollatorForLanguageModeling(**masking, seed=cfg.seed)
    else:
        collator, eval_collator = causal_collate, None
    trainer = Trainer(model=model, args=args, processing_class=tokenizer, data_collator=collator,
                      train_dataset=blocks.train, eval_dataset=blocks.eval, options=cfg, stop=stop,
                      callbacks=[log_starting_perplexity()])
    trainer.eval_collator = eval_collator
    # While training: heap reused (heap_reuse), frozen weights cast once, LoRA fused.
    cpu_speedups.speed_up_training(trainer, reuse_heap=cfg.heap_reuse)
    return trainer


def log_starting_perplexity():
    """A callback that logs the held-out perplexity of the evaluation before the first step."""
    from transformers import TrainerCallback

    class LogStartingPerplexity(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.global_step == 0 and metrics and "eval_loss" in metrics:
                log.info("held-out perplexity before training: %.3f", perplexity(metrics["eval_loss"]))

    return LogStartingPerplexity()


def causal_collate(rows: list[dict]) -> dict:
    """Full blocks need no padding; the model shifts the labels itself."""
    import torch

    ids = torch.tensor([row["input_ids"] for row in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def print_summary(metrics: dict, output_dir: str) -> None:
    if "perplexity_after" in metrics:
        before = metrics.get("perplexity_before")
        shown = "n/a (resumed)" if before is None else f"{before:.3f}"
        change = f" ({100 * metrics['perplexity_change']:+.1f}%)" if "perplexity_change" in metrics else ""
        kind = "masked-token " if metrics["objective"] == "mlm" else ""
        print(f"held-out {kind}perplexity: before {shown} -> after {metrics['perplexity_after']:.3f}{change}")
        print(f"eval loss: {'n/a' if before is None else format(metrics['eval_loss_before'], '.4f')} -> "
              f"{metrics['eval_loss_after']:.4f}")
    print(f"trained {metrics['global_step']} steps on {metrics['train_blocks']} blocks of {metrics['block_size']} "
          "tokens")
    print(f"outputs in {Path(output_dir).resolve()}")


if __name__ == "__main__":
    entry.run(main, Config, "Continued pretraining (causal- or masked-LM pretext) with the HF Trainer", __file__)
