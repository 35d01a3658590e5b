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
from pathlib import Path
from typing import Optional

from recipekit import checkpoint, data, distributed, entry, evaluate, hf, models, outputs
from recipekit.config import option
from recipekit.errors import Preempted
from recipekit.schema import LoraOptions, ModelOptions, TrainingOptions

log = logging.getLogger("recipes.sft")


@dataclass
class Config(ModelOptions, LoraOptions, TrainingOptions):
    dataset_name: str = option("hotel", help="embedded dataset, local .jsonl/.csv/.parquet file or dir, "
                               "or Hub dataset id")
    dataset_split: str = option("train", help="split to train on")
    dataset_text_field: str = option("messages", help="column holding chat messages or plain text")
    eval_dataset_name: Optional[str] = option(None, help="dataset for evaluation; null = dataset_name")
    eval_split: Optional[str] = option("eval", help="split to evaluate on; null disables evaluation")
    eval_answer_field: Optional[str] = option("answer_key", help="eval column with a string the reply must "
                                              "contain (answer hit rate); null or absent = skip")
    eval_max_new_tokens: int = option(48, help="reply length for the answer hit rate", min=1, max=4096)
    seq_length: int = option(512, help="max tokens per example (longer ones are truncated)", min=8, max=1 << 20)
    packing: bool = option(True, help="padding-free batches: concatenate examples, no pad tokens")

    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training()
        problems += self.check_lora(quantized=self.load_in_4bit or self.load_in_8bit)
        problems += data.check_name("dataset_name", self.dataset_name)
        if self.eval_dataset_name is not None:
            problems += data.check_name("eval_dataset_name", self.eval_dataset_name)
        return problems


def load_data(cfg: Config, token: str | None):
    """Load and check the splits; return (train, eval or None, eval rows for the hit rate, kind)."""
    train = data.load_split("dataset_name", cfg.dataset_name, cfg.dataset_split, token)
    data.require_rows(train, "dataset_name", cfg.dataset_name)
    data.require_columns(train, {"dataset_text_field": cfg.dataset_text_field}, cfg.dataset_name)
    kind = data.column_kind(train, cfg.dataset_text_field)
    check = data.require_chat_column if kind == "chat" else data.require_text_column
    check(train, "dataset_text_field", cfg.dataset_text_field, cfg.dataset_name)

    eval_name = cfg.eval_dataset_name or cfg.dataset_name
    if cfg.eval_split is None or not (cfg.eval_dataset_name or data.has_split(eval_name, cfg.eval_split)):
        return train, None, [], kind
    evals = data.load_split("eval_dataset_name", eval_name, cfg.eval_split, token)
    data.require_rows(evals, "eval_dataset_name", eval_name)
    data.require_columns(evals, {"dataset_text_field": cfg.dataset_text_field}, eval_name)
    check(evals, "dataset_text_field", cfg.dataset_text_field, eval_name)
    hit_rows = []
    if kind == "chat" and cfg.eval_answer_field and cfg.eval_answer_field in evals.column_names:
        hit_rows = evals.select_columns([cfg.dataset_text_field, cfg.eval_answer_field]).to_list()
    return train, evals, hit_rows, kind


def to_trl_format(dataset, cfg: Config, kind: str):
    if kind == "chat":
        return data.chat_to_prompt_completion(dataset, cfg.dataset_text_field)
    return data.text_only(dataset, cfg.dataset_text_field)


def hit_rate(model, tokenizer, rows, cfg: Config, adapter: bool) -> float | None:
    """Answer hit rate on rank 0; ``adapter=False`` measures the base model (LoRA switched off)."""
    if not rows or not distributed.is_main():
        return None
    with hf.generation_view(model, cfg, adapter):
        rate, _ = evaluate.answer_hit_rate(model, tokenizer, rows, cfg.dataset_text_field, cfg.eval_answer_field,
                                           cfg.eval_max_new_tokens, dtype=hf.train_dtype(cfg))
    return rate


def main(cfg: Config, check_only: bool) -> None:
    # Validate: everything about the input is checked before a model is loaded.
    hf.setup_logging()
    token = hf.hub_token(cfg)
    train_rows, eval_rows, hit_rows, kind = load_data(cfg, token)
    hf.check_hub_reachable(cfg, token)
    if check_only:
        return

    # Build.
    from trl import SFTConfig, SFTTrainer

    class Trainer(checkpoint.AtomicCheckpointMixin, hf.PlainLossOnCPUMixin, SFTTrainer):
        pass

    stopper = checkpoint.StopOnSignal()
    model_path = models.resolve(cfg.model_name)
    tokenizer = hf.load_tokenizer(model_path, cfg, token)
    model = hf.load_causal_lm(model_path, cfg, cfg, token)
    args = SFTConfig(**hf.trainer_args(cfg), max_length=cfg.seq_length, packing=cfg.packing,
                     dataset_text_field="text", completion_only_loss=None, dataset_num_proc=None)
    trainer = Trainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=to_trl_format(train_rows, cfg, kind),
        eval_dataset=to_trl_format(eval_rows, cfg, kind) if eval_rows is not None else None,
        peft_config=hf.lora_config(cfg, model) if cfg.use_peft else None,
        optimizers=(hf.make_optimizer(model, cfg), None),
        callbacks=[checkpoint.trainer_callback(stopper)],
    )
    if cfg.use_peft and distributed.is_main():
        trainer.model.print_trainable_parameters()

    # Train, resuming from the newest complete checkpoint.
    resume_from = checkpoint.latest_complete(cfg.output_dir) if cfg.resume else None
    metrics: dict = {"recipe": "sft", "resumed_from": str(resume_from) if resume_from else None,
                     "world_size": distributed.world_size(), "device": str(trainer.args.device)}
    if resume_from is None:
        if eval_rows is not None:
            metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
        metrics["hit_rate_before"] = hit_rate(trainer.model, tokenizer, hit_rows, cfg, adapter=False)
        if metrics["hit_rate_before"] is not None:
            log.info("held-out answer hit rate before training: %.1f%%", 100 * metrics["hit_rate_before"])
    distributed.barrier()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stopper.received is not None:
        raise Preempted(f"checkpoint saved at step {trainer.state.global_step}")

    # Evaluate and save.
    metrics.update(train_loss=result.training_loss, global_step=trainer.state.global_step,
                   train_runtime_s=result.metrics.get("train_runtime"))
    if eval_rows is not None:
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    metrics["hit_rate_after"] = hit_rate(trainer.model, tokenizer, hit_rows, cfg, adapter=True)
    metrics.update(hf.save_final(trainer, tokenizer, cfg.output_dir, model_path, cfg, cfg, token))
    if distributed.is_main():
        metrics["log_history"] = trainer.state.log_history
        outputs.write_metrics(metrics, cfg.output_dir)
        outputs.save_resolved_config(cfg, cfg.output_dir, "sft")
        outputs.plot_loss(trainer.state.log_history, cfg.output_dir, f"sft: {cfg.model_name}")
        report(metrics, cfg)
    if cfg.push_to_hub and distributed.is_main():
        trainer.model.push_to_hub(cfg.hub_model_id, token=token)
        tokenizer.push_to_hub(cfg.hub_model_id, token=token)


def report(metrics: dict, cfg: Config) -> None:
    before, after = metrics.get("hit_rate_before"), metrics.get("hit_rate_after")
    if after is not None:
        shown = "n/a (resumed)" if before is None else f"{100 * before:.1f}%"
        print(f"held-out answer hit rate: before {shown} -> after {100 * after:.1f}%")
    if "eval_loss_after" in metrics:
        print(f"eval loss: {metrics.get('eval_loss_before', float('nan')):.4f} -> {metrics['eval_loss_after']:.4f}")
    print(f"outputs in {Path(cfg.output_dir).resolve()}")
    print(f'chat with it: launcher try {cfg.output_dir} --prompt "What time is check-out?"')


if __name__ == "__main__":
    entry.run(main, Config, "Supervised fine-tuning with TRL SFTTrainer", __file__)
