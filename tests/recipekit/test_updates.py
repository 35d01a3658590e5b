"""The first-update guard: every trainable parameter group moves; and real runs that break it on purpose."""

from __future__ import annotations

import pytest

from recipekit import updates
from recipekit.errors import ParametersFrozen
from tests.conftest import read_metrics, run_launcher
from tests.recipekit.test_replicas import error_lines
from tests.recipes.test_sft import sft_args

# Put on PYTHONPATH, this runs in every process started with it: every optimizer step leaves the parameter
# group SABOTAGE_GROUP as it was before the step, as an optimizer that skips a group would.
SABOTAGE = '''
import os

if os.environ.get("SABOTAGE_GROUP"):
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    saved = []

    def keep(optimizer, args, kwargs):
        group = optimizer.param_groups[int(os.environ["SABOTAGE_GROUP"])]
        saved[:] = [p.detach().clone() for p in group["params"]]

    def restore(optimizer, args, kwargs):
        group = optimizer.param_groups[int(os.environ["SABOTAGE_GROUP"])]
        with torch.no_grad():
            for param, before in zip(group["params"], saved):
                param.copy_(before)

    register_optimizer_step_pre_hook(keep)
    register_optimizer_step_post_hook(restore)
'''


def two_groups():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.1}],
                                  lr=0.01)
    return model, optimizer


def step(model, optimizer, check, skip_group: int | None = None):
    import torch

    optimizer.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    check.before(optimizer, model)
    saved = None if skip_group is None else [p.detach().clone() for p in optimizer.param_groups[skip_group]["params"]]
    optimizer.step()
    if saved is not None:
        with torch.no_grad():
            for param, before in zip(optimizer.param_groups[skip_group]["params"], saved):
                param.copy_(before)
    check.after(optimizer)


def test_groups_that_move_pass_and_a_warmup_step_at_lr_0_is_not_held_against_them():
    model, optimizer = two_groups()
    check = updates.FirstUpdateCheck()
    optimizer.param_groups[0]["lr"] = 0.0  # a warmup step: group 0 is checked at the next one
    step(model, optimizer, check)
    assert check.moved == {1}
    optimizer.param_groups[0]["lr"] = 0.01
    step(model, optimizer, check)
    assert check.moved == {0, 1} and check.steps == updates.GIVE_UP_AFTER  # done: later steps cost nothing


def test_a_group_that_does_not_move_stops_the_run_naming_it():
    model, optimizer = two_groups()
    with pytest.raises(ParametersFrozen) as caught:
        step(model, optimizer, updates.FirstUpdateCheck(), skip_group=1)
    assert str(caught.value) == ("optimizer parameter group 1 (lr 0.1, 2 tensors, first: 1.weight) did not change in "
                                 "optimizer step 1 although it has gradients and a learning rate; nothing trains it, "
                                 "which is a bug (please report it)")


def test_a_learning_rate_below_the_weights_resolution_is_not_taken_for_a_frozen_group():
    model, optimizer = two_groups()
    for group in optimizer.param_groups:
        group["lr"] = 1e-12  # moves nothing in float32: not checked, not an error
    check = updates.FirstUpdateCheck()
    step(model, optimizer, check)
    assert check.moved == set()


def test_trainable_tensors_in_no_group_stop_the_run():
    import torch

    model, _ = two_groups()
    optimizer = torch.optim.AdamW(model[0].parameters(), lr=0.01)  # built before the head was made trainable
    with pytest.raises(ParametersFrozen, match=r"^2 trainable tensors are in no optimizer group, so nothing trains "
                                               r"them \(first: 1.weight\)"):
        step(model, optimizer, updates.FirstUpdateCheck())


def test_sft_stops_when_a_parameter_group_is_skipped_by_the_optimizer(tmp_path, tiny_model, small_hotel):
    """layer_lr_decay makes one group per layer; the optimizer leaves group 1 alone: exit 1, one line."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SABOTAGE)
    out = tmp_path / "out"
    args = sft_args(out, tiny_model, small_hotel, "layer_lr_decay=0.9", "max_steps=4", "eval_answer_field=null",
                    "eval_split=null", "eval_dataset_name=null")
    result = run_launcher(*args, env={"PYTHONPATH": str(tmp_path / "site"), "SABOTAGE_GROUP": "1"})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    (line,) = error_lines(result)
    # Step 1 is a warmup step at lr 0; step 2 is the first that should move every group.
    assert line.startswith("error: optimizer parameter group 1 (lr 0.00") and "did not change in optimizer step 2 " \
        "although it has gradients and a learning rate; nothing trains it, which is a bug" in line
    assert "base_model.model.model.layers." in line and not (out / "model").exists()


@pytest.mark.parametrize("recipe", ["sft", "dpo", "clm-pretext"])
def test_layer_lr_decay_with_lora_trains_every_adapter(recipe, tmp_path, tiny_model, small_hotel):
    """The groups are made from the adapters the trainer trains: every lora_B leaves its zero start."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    common = [f"model_name={tiny_model}", f"output_dir={out}", "max_steps=3", "learning_rate=3e-3", "bf16=false",
              "layer_lr_decay=0.9", "lr_multipliers={q_proj: 0.5}", "eval_split=null", "merge_adapter=false",
              "save_steps=10", "logging_steps=1"]
    own = {"sft": [f"dataset_name={small_hotel['train']}", "batch_size=2", "seq_length=96",
                   "eval_answer_field=null"],
           "dpo": ["batch_size=2", "max_length=96"],
           "clm-pretext": ["block_size=64", "batch_size=2"]}[recipe]
    result = run_launcher("run", f"recipes/{recipe}", *(a for o in common + own for a in ("--set", o)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    lora_b = {name: float(t.abs().max()) for name, t in adapter.items() if "lora_B" in name}
    assert lora_b and min(lora_b.values()) > 0, lora_b
    assert read_metrics(out)["global_step"] == 3
