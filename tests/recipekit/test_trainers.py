"""recipekit.trainers: the mixin on a real transformers Trainer (tiny model, a few steps).

The staged checkpoints override two private Trainer methods (``_save_checkpoint``, ``_get_output_dir``):
these tests fail, rather than a user's run, if an upgrade of transformers changes them.
"""

from __future__ import annotations

import os
import signal

import pytest

from recipekit import checkpoint, trainers
from recipekit.errors import Preempted
from recipekit.schema import TrainingOptions


def tiny_lm(tiny_model):
    from transformers import AutoModelForCausalLM

    from recipekit import models

    return AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model))


def make_trainer(out, model, stop, callbacks=(), **options):
    import torch
    import transformers

    class Trainer(trainers.RecipeTrainerMixin, transformers.Trainer):
        pass

    opts = TrainingOptions(**{"output_dir": str(out), "batch_size": 2, "max_steps": 3, "save_steps": 2,
                              "logging_steps": 1, "learning_rate": 1e-3, **options})
    torch.manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 1000, (16, 12)).tolist()]
    args = transformers.TrainingArguments(**trainers.arguments(opts))
    return Trainer(model=model, args=args, train_dataset=rows, data_collator=transformers.default_data_collator,
                   options=opts, stop=stop, callbacks=list(callbacks))


def test_checkpoints_are_staged_published_complete_and_pruned(tmp_path, tiny_model, stop):
    trainer = make_trainer(tmp_path, tiny_lm(tiny_model), stop, max_steps=3, save_steps=2, save_total_limit=1)
    metrics = trainer.train_from(None, evaluate_first=False)
    assert metrics["global_step"] == 3 and metrics["replicas_checked_at_steps"] == []  # one process: no replicas
    found = [(step, done) for step, _, done in checkpoint.checkpoints(tmp_path)]
    assert found == [(3, True)]  # saved at step 2 and at the last step; the newest one kept
    assert (tmp_path / "checkpoint-3" / "trainer_state.json").is_file() and not (tmp_path / ".staging").exists()

    resumed = make_trainer(tmp_path, tiny_lm(tiny_model), stop, max_steps=4, save_steps=10)
    assert resumed.train_from(checkpoint.resume_point(resumed.recipe_options), False)["global_step"] == 4


def test_a_signal_saves_and_stops_at_the_next_step(tmp_path, tiny_model, stop):
    from transformers import TrainerCallback

    class SignalAtStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGUSR1)

    trainer = make_trainer(tmp_path, tiny_lm(tiny_model), stop, [SignalAtStep1()], max_steps=50, save_steps=100)
    with pytest.raises(Preempted, match="checkpoint saved at step 2"):
        trainer.train_from(None, evaluate_first=False)
    assert checkpoint.latest_complete(tmp_path) == tmp_path / "checkpoint-2"


def test_the_optimizer_groups_the_parameters_the_trainer_trains(tmp_path, tiny_model, stop):
    """Built inside the Trainer from the model it wrapped: with LoRA, the adapters are what is grouped."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_lm(tiny_model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    trainer = make_trainer(tmp_path, model, stop, layer_lr_decay=0.5, max_steps=1, save_steps=10)
    trainer.create_optimizer()
    grouped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad} and grouped
    assert sorted({group["lr"] for group in trainer.optimizer.param_groups}) == pytest.approx([0.5e-3, 1e-3])


def test_added_callbacks_are_made_for_every_trainer(tmp_path, tiny_model, stop, monkeypatch):
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        pass

    monkeypatch.setattr(trainers, "added_callbacks", [Probe])
    trainer = make_trainer(tmp_path, tiny_lm(tiny_model), stop)
    kinds = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    ours = [kind for kind in kinds if kind in ("SaveAndStop", "CheckReplicas", "Probe")]
    assert ours == ["SaveAndStop", "CheckReplicas", "Probe"]  # the stop decides on saving before the guard checks


@pytest.mark.parametrize("options, steps", [
    ({"num_train_epochs": 1, "min_steps": 0}, 8),  # 16 rows of batch 2: 8 steps an epoch
    ({"num_train_epochs": 1, "min_steps": 13}, 13),  # one epoch and 5/8 of another
    ({"num_train_epochs": 1, "min_steps": 13, "max_steps": 5}, 5),  # max_steps wins
    ({"num_train_epochs": 1, "min_steps": 13, "gradient_accumulation_steps": 2}, 13),  # counted in updates
])
def test_min_steps_is_a_floor_on_optimizer_steps_when_scheduling_by_epochs(tmp_path, tiny_model, stop, options,
                                                                           steps):
    trainer = make_trainer(tmp_path, tiny_lm(tiny_model), stop, **{"max_steps": -1, "save_steps": 100, **options})
    assert trainer.train_from(None, evaluate_first=False)["global_step"] == steps
    decayed = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]
    assert decayed[-1] < 0.2 * decayed[0]  # the LR schedule spans the steps run, not the epochs asked for


def test_the_hand_written_loops_count_their_steps_the_same_way():
    assert TrainingOptions(num_train_epochs=3, min_steps=100).total_steps(7.5) == 100
    assert TrainingOptions(num_train_epochs=3, min_steps=10).total_steps(7.5) == 23
    assert TrainingOptions(num_train_epochs=3, min_steps=100, max_steps=4).total_steps(7.5) == 4
