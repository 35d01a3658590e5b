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

from recipekit import (checkpoint, distributed, entry, evaluate, frozen_prefix, hf, models, outputs, replicas,
                       sft_data)
from recipekit.errors import Preempted
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
    hf.setup_logging()
    token = hf.hub_token(cfg)
    splits = sft_data.load(cfg, token)
    hf.check_hub_reachable(cfg, token)
    if check_only:
        return
    train(cfg, splits, token)


def train(cfg: Config, splits: sft_data.SFTData, token: str | None, *, recipe: str = "sft",
          deepspeed: dict | None = None, callbacks: tuple = ()) -> dict:
    """Build, train, evaluate and save; return the metrics. Reused by sft-zero2 and optuna."""
    # Build.
    from trl import SFTConfig, SFTTrainer

    class Trainer(checkpoint.AtomicCheckpointMixin, hf.PlainLossOnCPUMixin, SFTTrainer):
        pass

    stopper = checkpoint.StopOnSignal()
    guard = replicas.trainer_callback(cfg.replica_check_steps)
    model_path = models.resolve(cfg.model_name)
    if cfg.attn_implementation == "sdpa":
        hf.use_document_attention()  # packed rows: attend per document, not through a block mask (CPU)
    tokenizer = hf.load_tokenizer(model_path, cfg, token)
    model = hf.load_causal_lm(model_path, cfg, cfg, token)
    # Evaluation scores reply positions only, never full logits: 4x batches (hotel eval, 2 CPU cores: 8 s, not 9.5).
    args = SFTConfig(**hf.trainer_args(cfg, eval_batch_scale=4), max_length=cfg.seq_length, packing=cfg.packing,
                     dataset_text_field="text", deepspeed=deepspeed)
    trainer = Trainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=sft_data.to_trl_format(splits.train, cfg, splits.kind),
        eval_dataset=sft_data.to_trl_format(splits.eval, cfg, splits.kind),
        peft_config=hf.lora_config(cfg, model) if cfg.use_peft else None,
        optimizers=(hf.make_optimizer(model, cfg), None),
        callbacks=[checkpoint.trainer_callback(stopper), guard, *callbacks],
    )
    if cfg.use_peft and distributed.is_main():
        trainer.model.print_trainable_parameters()
    if trainer.args.device.type == "cpu" and deepspeed is None:
        frozen_prefix.reuse_frozen_prefix(trainer.model)  # the layers below the adapters: once per document

    # Train, resuming from the newest complete checkpoint.
    resume_from = checkpoint.latest_complete(cfg.output_dir) if cfg.resume else None
    metrics: dict = {"recipe": recipe, "resumed_from": str(resume_from) if resume_from else None,
                     "world_size": distributed.world_size(), "device": str(trainer.args.device)}
    evaluate_first = resume_from is None and splits.eval is not None
    evaluate.evaluate_when_training_starts(trainer, evaluate_first)
    if resume_from is None:
        metrics["hit_rate_before"] = sft_data.hit_rate(trainer.model, tokenizer, splits.hit_rows, cfg, cfg,
                                                       hf.train_dtype(cfg), adapter=False)
        if metrics["hit_rate_before"] is not None:
            log.info("held-out answer hit rate before training: %.1f%%", 100 * metrics["hit_rate_before"])
    distributed.barrier()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stopper.received is not None:
        raise Preempted(f"checkpoint saved at step {trainer.state.global_step}")

    # Evaluate and save.
    history = trainer.state.log_history
    metrics.update(train_loss=result.training_loss, global_step=trainer.state.global_step,
                   train_runtime_s=evaluate.training_runtime(result.metrics, history, evaluate_first),
                   replicas_checked_at_steps=guard.checked)
    if splits.eval is not None:
        metrics["eval_loss_before"] = evaluate.starting_eval(history).get("eval_loss")
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    metrics["hit_rate_after"] = sft_data.hit_rate(trainer.model, tokenizer, splits.hit_rows, cfg, cfg,
                                                  hf.train_dtype(cfg), adapter=True)
    metrics.update(hf.save_final(trainer, tokenizer, cfg.output_dir, model_path, cfg, cfg, token))
    if distributed.is_main():
        metrics["log_history"] = trainer.state.log_history
        outputs.write_metrics(metrics, cfg.output_dir)
        outputs.save_resolved_config(cfg, cfg.output_dir, recipe)
        outputs.plot_loss(trainer.state.log_history, cfg.output_dir, f"{recipe}: {cfg.model_name}")
        sft_data.print_summary(metrics, cfg.output_dir)
    if cfg.push_to_hub and distributed.is_main():
        trainer.model.push_to_hub(cfg.hub_model_id, token=token)
        tokenizer.push_to_hub(cfg.hub_model_id, token=token)
    return metrics


if __name__ == "__main__":
    entry.run(main, Config, "Supervised fine-tuning with TRL SFTTrainer", __file__)
