"""Direct preference optimization (DPO) of a causal LM with TRL's DPOTrainer: LoRA or full.

    launcher run recipes/dpo                                  # embedded model + hotel preference pairs, CPU
    launcher run recipes/dpo --set use_peft=false             # full fine-tuning (holds a frozen reference copy)
    launcher run recipes/dpo --set loss_type=ipo --set beta=0.5
    launcher run recipes/dpo --nproc 2                        # DDP under torchrun
    python recipes/dpo/train.py --config my.yaml --set dataset_name=data/pairs.jsonl

Each row holds a prompt, a preferred (chosen) and a dispreferred (rejected) completion, either as
chat messages (prompt: a message list; chosen/rejected: the assistant reply as a message list) or
as plain strings; or, with an implicit prompt, chosen and rejected are two whole conversations that
differ only in their last (assistant) turn. With LoRA (the default) the reference model is the base model with the adapter
switched off, so no second copy of the model is held. Held-out preference accuracy, reward margin
and the policy's own likelihood preference are measured before and after training. Outputs:
model/ (adapter or full model + tokenizer), merged/ (adapter merged into its base), metrics.json,
loss.png, resolved_config.yaml, runs/ (TensorBoard).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recipekit import (card, checkpoint, cpu_speedups, data, distributed, entry, evaluate, formats, hub, loading,
                       lora, models, outputs, trainers)
from recipekit.config import option
from recipekit.errors import DataError
from recipekit.preemption import StopOnSignal
from recipekit.schema import LoraOptions, ModelOptions, TrackingOptions, TrainingOptions

log = logging.getLogger("recipes.dpo")
RECIPE = "dpo"
# A few of TRL's DPO losses; see the README for what each one optimizes.
LossType = Literal["sigmoid", "ipo", "hinge", "sigmoid_norm", "bco_pair", "apo_zero"]


@dataclass
class PreferenceDataOptions(data.DatasetOptions):
    dataset_name: str = data.dataset_option("hotel-preferences")
    dataset_format: formats.PairFormat = option("auto", help="explicit: prompt, chosen and rejected columns; "
                                                "implicit: chosen and rejected whole conversations that share their "
                                                "prompt; auto: explicit where the prompt column is there")
    prompt_field: str = option("prompt", help="column holding the prompt: a chat message list or a string")
    chosen_field: str = option("chosen", help="column holding the preferred completion (messages or a string)")
    rejected_field: str = option("rejected", help="column holding the dispreferred completion")
    max_length: int = option(256, help="max tokens of prompt + completion; longer pairs are cut at the end, "
                             "pairs whose prompt alone is this long are dropped", min=8, max=1 << 20)


@dataclass
class DPOOptions:
    beta: float = option(0.1, help="how strongly the policy is held to the reference model: higher = closer "
                         "(for ipo: the regularization tau)", above=0.0, max=1000.0)
    loss_type: LossType = option("sigmoid", help="DPO loss: sigmoid (the original DPO), ipo, hinge, "
                                 "sigmoid_norm, bco_pair or apo_zero")
    precompute_ref_log_probs: bool = option(False, help="score every train and eval pair with the reference "
                                            "once, before training, instead of at every step; full fine-tuning "
                                            "then holds no reference copy")


@dataclass
class Config(PreferenceDataOptions, DPOOptions, TrackingOptions, TrainingOptions, LoraOptions, ModelOptions):
    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training() + self.check_tracking()
        problems += self.check_lora(quantized=self.load_in_4bit or self.load_in_8bit) + self.check_data()
        seen: dict[str, str] = {}
        for key in ("prompt_field", "chosen_field", "rejected_field"):
            column = getattr(self, key)
            if not column.strip():
                problems.append(f"{key}: must not be empty")
            elif column in seen:
                problems.append(f"{key}: must name a different column than {seen[column]} (both are {column!r})")
            seen.setdefault(column, key)
        if isinstance(self.peft_target_modules, list) and "lm_head" in self.peft_target_modules:
            problems.append("peft_target_modules: lm_head cannot get an adapter in DPO (TRL computes the "
                            "log-probabilities from lm_head.weight directly, so it would never train)")
        return problems


@dataclass
class Pairs:
    train: Any
    eval: Any = None
    kind: str = "chat"  # "chat" (message lists) or "text" (strings)


def main(cfg: Config, check_only: bool) -> None:
    # Validate: config, data and tokenizer are all checked before a model is loaded.
    token, pairs = entry.prepare(cfg, load_pairs)
    model_path = models.resolve(cfg.model_name, weights=not check_only)
    tokenizer = loading.load_tokenizer(model_path, cfg, token, chat=pairs.kind == "chat")
    check_prompts_fit(pairs, tokenizer, cfg)
    if check_only:
        return
    train(cfg, pairs, model_path, tokenizer, token, StopOnSignal())


def load_pairs(cfg: Config, token: str | None) -> Pairs:
    """Train (and eval) pairs as prompt/chosen/rejected, an implicit prompt split off the two conversations;
    every problem names its config key."""
    names = {"prompt": cfg.prompt_field, "chosen": cfg.chosen_field, "rejected": cfg.rejected_field}
    kinds: list[str] = []

    def to_pairs(rows, key: str, name: str):
        if formats.detect_pairs(rows.column_names, cfg.dataset_format, names, name, key) == "implicit":
            rows = implicit_to_explicit(rows, cfg, name)
        else:
            rows = rows.map(lambda row: {role: row[column] for role, column in names.items()},
                            remove_columns=rows.column_names)
        kinds.append(pair_format(rows, cfg, name))
        if kinds[-1] != kinds[0]:
            other = "plain-text" if kinds[0] == "chat" else "chat"
            raise DataError(f"eval_dataset_name: {name!r} holds {other} pairs but {cfg.dataset_name!r} holds "
                            f"{'chat' if kinds[0] == 'chat' else 'plain-text'} pairs; use one format for both")
        return rows

    train, evals = data.load_splits(cfg, {}, token, to_pairs)
    if evals is None:
        log.warning("no eval split: held-out preference accuracy will not be measured")
    return Pairs(train=train, eval=evals, kind=kinds[0])


def implicit_to_explicit(rows, cfg: Config, name: str):
    """Conversations that differ only in their last turn -> the shared turns as the prompt, the last turns."""
    for index, row in enumerate(data.sample(rows)):
        try:
            formats.split_implicit(row[cfg.chosen_field], row[cfg.rejected_field])
        except ValueError as exc:
            raise DataError(f"dataset_format: row {index} of {name!r} (implicit prompt): {exc}") from None
    return rows.map(lambda row: formats.split_implicit(row[cfg.chosen_field], row[cfg.rejected_field]),
                    remove_columns=rows.column_names)


def pair_format(rows, cfg: Config, name: str) -> str:
    """'chat' or 'text'; all three columns must agree, and hold well-formed values."""
    kinds = {column: data.column_kind(rows, column) for column in ("prompt", "chosen", "rejected")}
    kind = kinds["prompt"]
    what = {"chat": "chat messages", "text": "strings"}
    for column, key in (("chosen", "chosen_field"), ("rejected", "rejected_field")):
        if kinds[column] != kind:
            raise DataError(f"{key}: column {getattr(cfg, key)!r} of {name!r} holds {what[kinds[column]]} but "
                            f"prompt_field column {cfg.prompt_field!r} holds {what[kind]}; use chat messages "
                            "for all three or strings for all three")
    for column, key in (("prompt", "prompt_field"), ("chosen", "chosen_field"), ("rejected", "rejected_field")):
        if kind == "chat":
            data.require_chat_column(rows, key, column, name, last_role=None if column == "prompt" else "assistant")
        else:
            data.require_text_column(rows, key, column, name)
    return kind


def check_prompts_fit(pairs: Pairs, tokenizer, cfg: Config) -> None:
    """A prompt of max_length tokens leaves no room for its completion."""
    for key, rows, name in (("dataset_name", pairs.train, cfg.dataset_name),
                            ("eval_dataset_name", pairs.eval, cfg.eval_dataset_name or cfg.dataset_name)):
        if rows is None:
            continue
        lengths = [len(evaluate.prompt_ids(tokenizer, row["prompt"])) for row in data.sample(rows)]
        too_long = sum(n >= cfg.max_length for n in lengths)
        if too_long == len(lengths):
            raise DataError(f"max_length: every prompt in the first {len(lengths)} rows of {name!r} is at least "
                            f"{cfg.max_length} tokens long (longest: {max(lengths)}), leaving no room for the "
                            "completions; raise max_length")
        if too_long:
            log.warning("%s: %d of the first %d prompts of %r are max_length (%d) tokens or longer; those pairs "
                        "are dropped", key, too_long, len(lengths), name, cfg.max_length)


def train(cfg: Config, pairs: Pairs, model_path: str, tokenizer, token: str | None, stop: StopOnSignal) -> dict:
    # Build.
    from trl import DPOConfig, DPOTrainer

    class Trainer(trainers.RecipeTrainerMixin, DPOTrainer):
        pass

    before_row: dict = {}
    model = loading.load_model(model_path, cfg, cfg, token)
    args = DPOConfig(**trainers.arguments(cfg, recipe=RECIPE), beta=cfg.beta, loss_type=[cfg.loss_type],
                     max_length=cfg.max_length, precompute_ref_log_probs=cfg.precompute_ref_log_probs)
    # ref_model=None: with a peft_config the reference is this same model with its adapter disabled;
    # without one (full fine-tuning) TRL loads a second, frozen copy of the model as the reference,
    # unless precompute_ref_log_probs scores every pair with it once, before training.
    trainer = Trainer(
        model=model, ref_model=None, args=args, processing_class=tokenizer,
        train_dataset=pairs.train, eval_dataset=pairs.eval, options=cfg, stop=stop,
        peft_config=lora.lora_config(cfg, model) if cfg.use_peft else None,
        callbacks=[evaluate.keep_in_history(before_row)],
    )
    cpu_speedups.use_plain_lm_head(trainer, peft=cfg.use_peft)
    # While training: heap reused, frozen weights cast once; PEFT's own LoRA forward, as the fused one did not pay
    # here (README).
    cpu_speedups.speed_up_training(trainer, fuse_lora=False, reuse_heap=cfg.heap_reuse)
    if cfg.use_peft and distributed.is_main():
        trainer.model.print_trainable_parameters()

    # Measure the starting point, then train, resuming from the newest complete checkpoint.
    resume_from = checkpoint.resume_point(cfg, pairs.train)
    metrics = {**outputs.run_facts(RECIPE, resume_from, trainer.args.device),
               "train_pairs": len(trainer.train_dataset),
               "eval_pairs": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0}
    if resume_from is None and pairs.eval is not None:
        before_row.update(step=0, **{f"eval_{k}": v for k, v in preference_eval(trainer, cfg.beta).items()})
        log.info("held-out preference accuracy before training: %.1f%%",
                 100 * before_row["eval_preference_accuracy"])
    metrics.update(trainer.train_from(resume_from, evaluate_first=False))

    # Evaluate and save.
    if pairs.eval is not None:
        # On a resumed run the starting point comes back from the checkpoint's log history.
        before = next((row for row in trainer.state.log_history
                       if row.get("step") == 0 and "eval_preference_accuracy" in row), {})
        after = preference_eval(trainer, cfg.beta)
        trainer.state.log_history.append({"step": metrics["global_step"], **{f"eval_{k}": v for k, v in after.items()}})
        for key, value in after.items():
            metrics[f"{key}_before"] = before.get(f"eval_{key}")
            metrics[f"{key}_after"] = value
    metrics.update(outputs.save_final(trainer, tokenizer, cfg.output_dir, model_path, cfg, cfg, token))
    question = sample_question(pairs)
    outputs.finish(cfg, RECIPE, metrics, trainer.state.log_history,
                   functools.partial(print_summary, question=question), question=question)
    hub.push(cfg, trainer.model, tokenizer, token)
    return metrics


def preference_eval(trainer, beta: float) -> dict[str, float]:
    """One pass over the eval pairs scoring each completion (summed log-probability of its tokens given the
    prompt) under the policy and under the reference; collective: every rank calls it.

    - preference_accuracy / reward_margin: the implicit DPO reward, beta * (log p_policy - log p_ref), of
      chosen vs rejected (TRL's rewards/accuracies and rewards/margins). Before training the policy is the
      reference, so every pair is a tie: accuracy 0 (a tie is not a win), margin 0.
    - likelihood_accuracy / logp_margin: whether the policy alone gives the chosen completion the higher
      log-likelihood, and by how much (nats); meaningful before training too.
    """
    import torch

    start = time.perf_counter()
    model = trainer.model
    was_training = model.training
    model.eval()
    rows = []
    for batch in trainer.get_eval_dataloader():  # TRL's collator: the chosen rows, then the rejected rows
        batch = trainer._prepare_inputs(batch)
        inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps",
                                                                 "ref_rejected_logps")}
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        with torch.no_grad(), trainer.accelerator.autocast():
            # TRL's fused LM head: per-token log-probs of the labels, 0 outside the completion.
            logps = model(**inputs, labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(dim=1)
        if "ref_chosen_logps" in batch:  # precompute_ref_log_probs: scored once, before training
            ref = (batch["ref_chosen_logps"], batch["ref_rejected_logps"])
        else:  # the adapter-disabled model, or the frozen reference copy
            ref = trainer.compute_ref_log_probs(trainer.ref_model or model, batch)
        scores = torch.stack([*logps.chunk(2), *ref], dim=1).float()
        rows.append(trainer.accelerator.gather_for_metrics(scores).cpu())
    model.train(was_training)
    log.info("scored %d held-out pairs in %.0f s", sum(len(r) for r in rows), time.perf_counter() - start)
    chosen, rejected, ref_chosen, ref_rejected = torch.cat(rows).double().unbind(dim=1)
    rewards = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return {"preference_accuracy": (rewards > 0).double().mean().item(), "reward_margin": rewards.mean().item(),
            "likelihood_accuracy": (chosen > rejected).double().mean().item(),
            "logp_margin": (chosen - rejected).mean().item()}


def sample_question(pairs: Pairs) -> str | None:
    """A prompt from the user's own eval (else train) pairs to suggest trying: its last user turn, or the string."""
    prompt = (pairs.eval if pairs.eval is not None else pairs.train)[0]["prompt"]
    if isinstance(prompt, str):
        return prompt.strip() or None
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)


def print_summary(metrics: dict, output_dir: str, question: str | None = None) -> None:
    def show(key: str, percent: bool = False) -> str:
        value = metrics.get(key)
        if value is None:
            return "n/a (resumed)"
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    if "preference_accuracy_after" in metrics:
        pairs = metrics["eval_pairs"]
        print(f"held-out preference accuracy (reward of chosen > rejected, {pairs} pairs; 0% before = ties "
              f"with the reference): {show('preference_accuracy_before', True)} -> "
              f"{show('preference_accuracy_after', True)}")
        print(f"held-out reward margin: {show('reward_margin_before')} -> {show('reward_margin_after')}")
        print(f"held-out likelihood accuracy (log p(chosen) > log p(rejected)): "
              f"{show('likelihood_accuracy_before', True)} -> {show('likelihood_accuracy_after', True)}")
    print(f"outputs in {Path(output_dir).resolve()}")
    print(f"chat with it: {card.try_command(output_dir, question)}")


if __name__ == "__main__":
    entry.run(main, Config, "Direct preference optimization with TRL DPOTrainer", __file__)
