"""The transformers Trainer as the Trainer-based recipes run it (sft, sft-zero2, optuna's trials,
clm-pretext, dpo): its arguments from the shared options, and a mixin that gives it staged
checkpoints, the recipes' optimizer groups, the stop on a signal and the replica guard."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

from recipekit import checkpoint, distributed, evaluate, optim, progress, replicas, tracking, updates
from recipekit.errors import Preempted
from recipekit.preemption import StopOnSignal
from recipekit.schema import TrackingOptions, TrainingOptions

log = logging.getLogger("recipekit")

# Makers of the TrainerCallbacks every recipe trainer in this process gets after its own, called as the
# trainer is built (bench/ours.py adds its probe).
added_callbacks: list[Callable[[], Any]] = []


class NothingLeftToTrain(Exception):
    """``train()`` resumed from a checkpoint at or past the run's last step (a finished run started again)."""


def finished_run_guard():
    """A TrainerCallback that ends ``train()`` before its first step when the checkpoint it resumed from is at
    or past the last step. The Trainer would otherwise run one step more before it checks ``max_steps``
    (whenever the last step falls inside an epoch): a step past the end of the schedule, and a checkpoint
    after it."""
    from transformers import TrainerCallback

    class StopWhenFinished(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                raise NothingLeftToTrain(f"resumed at step {state.global_step} of {state.max_steps}")

    return StopWhenFinished()


def arguments(train: TrainingOptions, eval_batch_scale: int = 1, recipe: str = "run") -> dict[str, Any]:
    """TrainingArguments keywords that follow directly from the shared options; ``recipe`` names the run for
    the trackers.

    Evaluation batches are ``eval_batch_scale`` times the training batch: they keep no activations
    for a backward, so a recipe whose evaluation holds no full-vocabulary logits can take larger ones.
    """
    import torch

    chosen = train.report_to if isinstance(train, TrackingOptions) else "tensorboard"
    run_name = f"{recipe}: {Path(train.output_dir).name}"
    report_to = tracking.configure(tracking.trackers(chosen), train.output_dir, recipe, run_name, distributed.is_main())
    return dict(report_to=report_to or "none", run_name=run_name, project=tracking.PROJECT,
        use_cpu=not torch.cuda.is_available(), output_dir=train.output_dir, learning_rate=train.learning_rate,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size * eval_batch_scale,
        gradient_accumulation_steps=train.gradient_accumulation_steps, num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps, weight_decay=train.weight_decay, lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio, max_grad_norm=train.max_grad_norm, seed=train.seed, data_seed=train.seed,
        bf16=train.bf16, fp16=train.fp16, activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs=train.gradient_checkpointing_kwargs, logging_steps=train.logging_steps,
        logging_first_step=True, save_strategy="steps", save_steps=train.save_steps,
        save_total_limit=train.save_total_limit, eval_strategy="no",
        push_to_hub=False, disable_tqdm=True, include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False, dataloader_pin_memory=False,
    )


class RecipeTrainerMixin:
    """Mix into a ``transformers.Trainer`` subclass, ahead of it.

    - Checkpoints go through ``checkpoint.staged``: the Trainer writes each one into the staging
      dir, which is published once all ranks are done. The Trainer's own rotation is bypassed (it
      could delete the newest complete checkpoint).
    - The optimizer follows ``layer_lr_decay`` and ``lr_multipliers`` (``optim``), built once the
      Trainer has wrapped the model, so LoRA's trainable parameters are the ones grouped.
    - ``stop`` saves and stops the run on a signal; the replica guard compares data-parallel ranks; the
      first-update guard (``updates``) stops a run in which a trainable parameter group does not move; the
      finished-run guard keeps a finished run that is started again from training past its last step.
    - Progress: one line per logging step from the job's first process (``progress``), instead of the
      Trainer's dict per log from every node.
    """

    def __init__(self, *args, options: TrainingOptions, stop: StopOnSignal, callbacks=(), **kwargs):
        self.recipe_options, self.stop_on_signal = options, stop
        self.replica_guard = replicas.trainer_callback(options.replica_check_steps)
        callbacks = [finished_run_guard(), stop.trainer_callback(), self.replica_guard, *callbacks,
                     *(make() for make in added_callbacks)]
        if not getattr(kwargs.get("args"), "deepspeed", None):  # DeepSpeed's optimizer holds flat copies
            callbacks.append(updates.trainer_callback())
        super().__init__(*args, callbacks=[*callbacks, progress.trainer_callback()], **kwargs)
        from transformers.trainer_callback import PrinterCallback

        self.remove_callback(PrinterCallback)  # a dict per log from every node: the progress line replaces it

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = optim.adamw_unless_uniform(self.model, self.recipe_options)
        return super().create_optimizer(model)

    def _get_output_dir(self, trial):  # noqa: D401 - Trainer hook
        if getattr(self, "_staging_save", False):
            return str(Path(self.args.output_dir) / checkpoint.STAGING)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            with checkpoint.staged(self.args.output_dir, self.state.global_step, limit):
                self._staging_save = True
                super()._save_checkpoint(model, trial)
        finally:
            self._staging_save = False
            self.args.save_total_limit = limit

    def apply_min_steps(self) -> None:
        """Schedule by optimizer steps where the epochs give fewer than ``min_steps`` (the Trainer then
        loops over the data as often as needed, the LR schedule spread over all of them)."""
        opts = self.recipe_options
        if self.args.max_steps > 0 or opts.min_steps <= 0:
            return
        per_epoch = max(math.ceil(len(self.get_train_dataloader()) / self.args.gradient_accumulation_steps), 1)
        total = opts.total_steps(per_epoch)
        if total > math.ceil(opts.num_train_epochs * per_epoch):
            self.args.max_steps = total
            log.info("%g epochs are %d optimizer steps: training %d (min_steps), %.1f epochs",
                     opts.num_train_epochs, math.ceil(opts.num_train_epochs * per_epoch), total, total / per_epoch)

    def train_from(self, resume_from: Path | None, evaluate_first: bool) -> dict[str, Any]:
        """``train()`` from ``resume_from``, evaluating before the first step if asked; raises Preempted
        when a signal stopped it. Returns the training metrics every Trainer recipe reports."""
        self.apply_min_steps()
        evaluate.evaluate_when_training_starts(self, evaluate_first)
        distributed.barrier()
        try:
            result = self.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except NothingLeftToTrain as done:
            # The model and the state are the checkpoint's; end the run as train() would have ended it.
            self.is_in_train = False
            self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
            if distributed.is_main():
                print(f"nothing left to train: {done}", flush=True)
            return dict(train_loss=None, global_step=self.state.global_step, train_runtime_s=0.0,
                        replicas_checked_at_steps=self.replica_guard.checked)
        if self.stop_on_signal.stopped:
            raise Preempted(f"checkpoint saved at step {self.state.global_step}")
        return dict(train_loss=result.training_loss, global_step=self.state.global_step,
                    train_runtime_s=evaluate.training_runtime(result.metrics, self.state.log_history, evaluate_first),
                    replicas_checked_at_steps=self.replica_guard.checked)
