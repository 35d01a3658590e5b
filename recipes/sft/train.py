"""Supervised fine-tuning (SFT) of a causal LM with TRL's SFTTrainer: LoRA, QLoRA or full.

    launcher run recipes/sft                                  # embedded model + hotel data, CPU
    launcher run recipes/sft --set use_peft=false             # full fine-tuning
    launcher run recipes/sft --set load_in_4bit=true          # QLoRA
    launcher run recipes/sft --nproc 2                        # DDP under torchrun
    python recipes/sft/train.py --config my.yaml --set learning_rate=1e-4

Chat data (a column of message lists) is trained on the final assistant reply only; plain text
data is trained on every token. Outputs: model/ (adapter or full model + tokenizer), merged/
(adapter merged into its base), metrics.json, loss.png, resolved_config.yaml, runs/ (TensorBoard).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from recipekit import (checkpoint, cpu_speedups, distributed, entry, evaluate, hub, loading, lora, models, outputs,
                       process, sft_data, trainers)
from recipekit.preemption import StopOnSignal
from recipekit.schema import LoraOptions, ModelOptions, TrainingOptions
from recipekit.sft_data import SFTDataOptions

log = logging.getLogger("recipes.sft")


@dataclass
class Config(SFTDataOptions, TrainingOptions, LoraOptions, ModelOptions):
    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training() + self.check_data()
        return problems + self.check_lora(quantized=self.load_in_4bit or self.load_in_8bit)


def main(cfg: Config, check_only: bool) -> None:
    # Validate: everything about the input is checked before a model is loaded.
    process.setup_logging()
    token = hub.token(cfg)
    splits = sft_data.load(cfg, token)
    hub.check_reachable(cfg, token)
    if check_only:
        return
    train(cfg, splits, token, StopOnSignal())


def train(cfg: Config, splits: sft_data.SFTData, token: str | None, stop: StopOnSignal, *, recipe: str = "sft",
          deepspeed: dict | None = None, callbacks: tuple = ()) -> dict:
    """Build, train, evaluate and save; return the metrics. Reused by sft-zero2 and optuna."""
    # Build.
    from trl import SFTConfig, SFTTrainer

    class Trainer(trainers.RecipeTrainerMixin, cpu_speedups.PlainLossOnCPUMixin, SFTTrainer):
        pass

    model_path = models.resolve(cfg.model_name)
    if cfg.attn_implementation == "sdpa":
        cpu_speedups.use_document_attention()  # packed rows: attend per document, not through a block mask (CPU)
    tokenizer = loading.load_tokenizer(model_path, cfg, token)
    model = loading.load_model(model_path, cfg, cfg, token)
    # Evaluation scores reply positions only, never full logits, so it takes 4x batches.
    args = SFTConfig(**trainers.arguments(cfg, eval_batch_scale=4), max_length=cfg.seq_length, packing=cfg.packing,
                     dataset_text_field="text", deepspeed=deepspeed)
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

    # Train, resuming from the newest complete checkpoint.
    resume_from = checkpoint.resume_point(cfg)
    metrics = outputs.run_facts(recipe, resume_from, trainer.args.device)
    if resume_from is None:
        metrics["hit_rate_before"] = sft_data.hit_rate(trainer.model, tokenizer, splits.hit_rows, cfg, cfg,
                                                       loading.train_dtype(cfg), adapter=False)
        if metrics["hit_rate_before"] is not None:
            log.info("held-out answer hit rate before training: %.1f%%", 100 * metrics["hit_rate_before"])
    metrics.update(trainer.train_from(resume_from, evaluate_first=resume_from is None and splits.eval is not None))

    # Evaluate and save.
    if splits.eval is not None:
        metrics["eval_loss_before"] = evaluate.starting_eval(trainer.state.log_history).get("eval_loss")
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    metrics["hit_rate_after"] = sft_data.hit_rate(trainer.model, tokenizer, splits.hit_rows, cfg, cfg,
                                                  loading.train_dtype(cfg), adapter=True)
    metrics.update(outputs.save_final(trainer, tokenizer, cfg.output_dir, model_path, cfg, cfg, token))
    outputs.finish(cfg, recipe, metrics, trainer.state.log_history, sft_data.print_summary)
    hub.push(cfg, trainer.model, tokenizer, token)
    return metrics


if __name__ == "__main__":
    entry.run(main, Config, "Supervised fine-tuning with TRL SFTTrainer", __file__)
