"""Supervised fine-tuning with TRL's SFTTrainer, as the sft and sft-zero2 recipes and optuna's trials run it.

``Options`` holds the keys of one SFT run. ``build`` makes the trainer (LoRA, QLoRA or all weights;
under DeepSpeed when given its config), ``train`` measures the starting point and trains from the
newest complete checkpoint, and ``save`` evaluates, saves the model and writes the run's outputs.
Data in any format of ``recipekit.formats``: chat (messages, ShareGPT, Alpaca, prompt/completion message
lists) is trained on the final assistant reply only, prompt/completion strings on the completion only (no
chat template), plain text on every token.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from recipekit import (checkpoint, cpu_speedups, distributed, evaluate, hub, loading, lora, models, outputs, sft_data,
                       trainers)
from recipekit.preemption import StopOnSignal
from recipekit.schema import LoraOptions, ModelOptions, TrackingOptions, TrainingOptions
from recipekit.sft_data import SFTDataOptions

log = logging.getLogger("recipekit.sft")


@dataclass
class Options(SFTDataOptions, TrackingOptions, TrainingOptions, LoraOptions, ModelOptions):
    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training() + self.check_tracking() + self.check_data()
        return problems + self.check_lora(quantized=self.load_in_4bit or self.load_in_8bit)


@dataclass
class Run:
    """One SFT run, as ``build`` made it."""

    cfg: Options
    recipe: str  # names the run in metrics.json, resolved_config.yaml and the loss plot
    splits: sft_data.SFTData
    token: str | None
    model_path: str
    tokenizer: Any
    trainer: Any


def build(cfg: Options, splits: sft_data.SFTData, token: str | None, stop: StopOnSignal, *, recipe: str,
          deepspeed: dict | None = None, callbacks: tuple = ()) -> Run:
    """The tokenizer, the model and an SFTTrainer for them; ``callbacks`` come after the recipe trainer's own."""
    from trl import SFTConfig, SFTTrainer

    class Trainer(trainers.RecipeTrainerMixin, cpu_speedups.PlainLossOnCPUMixin, SFTTrainer):
        pass

    model_path = models.resolve(cfg.model_name)
    if cfg.attn_implementation == "sdpa":
        cpu_speedups.use_document_attention()  # packed rows: attend per document, not through a block mask (CPU)
    tokenizer = loading.load_tokenizer(model_path, cfg, token, chat=splits.kind == "chat")
    model = loading.load_model(model_path, cfg, cfg, token)
    # Evaluation scores reply positions only, never full logits, so it takes 4x batches.
    args = SFTConfig(**trainers.arguments(cfg, eval_batch_scale=4, recipe=recipe), max_length=cfg.seq_length,
                     packing=cfg.packing, dataset_text_field="text", deepspeed=deepspeed)
    trainer = Trainer(
        model=model, args=args, processing_class=tokenizer, options=cfg, stop=stop, callbacks=callbacks,
        train_dataset=sft_data.to_trl_format(splits.train, cfg, splits.kind),
        eval_dataset=sft_data.to_trl_format(splits.eval, cfg, splits.kind),
        peft_config=lora.lora_config(cfg, model) if cfg.use_peft else None,
    )
    if cfg.use_peft and distributed.is_main():
        trainer.model.print_trainable_parameters()
    if deepspeed is None and cpu_speedups.enabled("frozen_prefix", trainer.args.device):
        cpu_speedups.reuse_frozen_prefix(trainer.model)  # the layers below the adapters: once per document
    # While training: heap reused, and (not under DeepSpeed's engine) frozen weights cast once, LoRA fused.
    cpu_speedups.speed_up_training(trainer, model_paths=deepspeed is None, reuse_heap=cfg.heap_reuse)
    return Run(cfg, recipe, splits, token, model_path, tokenizer, trainer)


def train(run: Run) -> dict[str, Any]:
    """Measure the answer hit rate (unless resuming), then train from the newest complete checkpoint,
    evaluating before the first step; return the metrics so far."""
    cfg, trainer = run.cfg, run.trainer
    resume_from = checkpoint.resume_point(cfg, run.splits.train)
    metrics = {**outputs.run_facts(run.recipe, resume_from, trainer.args.device), **sft_data.facts(run.splits)}
    if resume_from is None:
        metrics["hit_rate_before"] = sft_data.hit_rate(trainer.model, run.tokenizer, run.splits.hit_rows, cfg, cfg,
                                                       loading.train_dtype(cfg), adapter=False)
        if metrics["hit_rate_before"] is not None:
            log.info("held-out answer hit rate before training: %.1f%%", 100 * metrics["hit_rate_before"])
    metrics.update(trainer.train_from(resume_from, evaluate_first=resume_from is None and run.splits.eval is not None))
    return metrics


def save(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """Evaluate (eval loss, answer hit rate), save the model, write the run's outputs, push it if asked;
    return the metrics."""
    cfg, trainer, tokenizer = run.cfg, run.trainer, run.tokenizer
    if run.splits.eval is not None:
        metrics["eval_loss_before"] = evaluate.starting_eval(trainer.state.log_history).get("eval_loss")
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    metrics["hit_rate_after"] = sft_data.hit_rate(trainer.model, tokenizer, run.splits.hit_rows, cfg, cfg,
                                                  loading.train_dtype(cfg), adapter=True)
    metrics.update(outputs.save_final(trainer, tokenizer, cfg.output_dir, run.model_path, cfg, cfg, run.token))
    question = sft_data.sample_question(run.splits)
    summary = functools.partial(sft_data.print_summary, question=question)
    outputs.finish(cfg, run.recipe, metrics, trainer.state.log_history, summary, question=question)
    hub.push(cfg, trainer.model, tokenizer, run.token)
    return metrics
