"""The replica guard: its checksum, its message, and real runs whose synchronization is broken on purpose."""

from __future__ import annotations

import pytest

from recipekit import replicas
from tests.conftest import run_launcher
from tests.recipes.test_pipeline_parallel import launcher_args as pipeline_args
from tests.recipes.test_sft import sft_args

# Put on PYTHONPATH, this runs in every process started with it: on the training process of one rank,
# after one chosen optimizer step, it moves every weight that optimizer updates by 1e-3. The other
# ranks never hear of it, as when a rank drops out of the gradient all-reduce.
SABOTAGE = '''
import os

if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("SABOTAGE_RANK"):
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = [0]

    def nudge(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == int(os.environ["SABOTAGE_STEP"]):
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for param in group["params"]:
                        param.add_(1e-3)

    register_optimizer_step_post_hook(nudge)
'''


def test_checksum_is_exact_and_sees_one_bit_and_a_swap():
    import torch

    torch.manual_seed(0)
    a, b = torch.randn(300, 7), torch.randn(5)
    assert replicas.checksum([a, b]) == replicas.checksum([a.clone(), b.clone()])
    flipped = a.clone()
    flipped.view(torch.int32)[17, 3] ^= 1  # the lowest mantissa bit of one element
    assert replicas.checksum([flipped, b]) != replicas.checksum([a, b])
    same_values = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    assert replicas.checksum(same_values)[0] == replicas.checksum(same_values[::-1])[0]
    assert replicas.checksum(same_values) != replicas.checksum(same_values[::-1])  # position-weighted
    # Summation order does not matter: the bits are added as integers.
    assert replicas.checksum([a]) == replicas.checksum([a.flip(0).flip(0).contiguous()])
    half = torch.randn(64, dtype=torch.bfloat16)
    assert replicas.checksum([half]) == replicas.checksum([half.clone()])


def test_message_names_the_step_and_the_ranks_on_either_side():
    sums = [(1, 1), (1, 1), (2, 5), (1, 1), (3, 3)]
    message = replicas.describe([0, 1, 2, 3, 4], sums, 7, "trainable parameters")
    assert message.startswith("data-parallel replicas diverged at step 7: the trainable parameters of ranks 2, 4 "
                              "differ from ranks 0, 1, 3;")
    assert "\n" not in message


def test_due_at_checkpoints_the_last_step_and_every_n():
    assert [s for s in range(1, 9) if replicas.due(s, 0, s in (4, 8))] == [4, 8]
    assert [s for s in range(1, 9) if replicas.due(s, 3, s == 8)] == [3, 6, 8]


def broken_run(tmp_path, args: list[str], rank: int, step: int):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SABOTAGE)
    return run_launcher(*args, env={"PYTHONPATH": str(tmp_path / "site"), "SABOTAGE_RANK": str(rank),
                                    "SABOTAGE_STEP": str(step)})


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_sft_on_two_ranks_stops_at_the_checkpoint_after_a_rank_diverges(tmp_path, tiny_model, small_hotel):
    """On by default: rank 1 drifts after step 2, the comparison before the step-4 checkpoint stops the run."""
    out = tmp_path / "out"
    args = sft_args(out, tiny_model, small_hotel, "max_steps=6", "eval_answer_field=null", nproc=2)
    result = broken_run(tmp_path, args, rank=1, step=2)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert error_lines(result) == ["error: data-parallel replicas diverged at step 4: the trainable parameters of "
                                   "rank 1 differ from rank 0; gradients were not synchronized, which is a bug "
                                   "(please report it)"]
    assert not (out / "checkpoint-4").exists() and not (out / "model").exists()  # nothing diverged is kept


def test_pipeline_stops_when_the_two_copies_of_the_tied_weight_differ(tmp_path, tiny_model, small_hotel):
    out = tmp_path / "out"
    args = pipeline_args(out, tiny_model, small_hotel, "max_steps=3", "save_steps=10", "eval_split=null")
    result = broken_run(tmp_path, args, rank=1, step=1)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert error_lines(result) == ["error: data-parallel replicas diverged at step 3: the tied embedding / LM head "
                                   "of rank 1 differ from rank 0; gradients were not synchronized, which is a bug "
                                   "(please report it)"]


def test_a_sharded_recipe_refuses_the_replica_check_it_cannot_make():
    result = run_launcher("run", "recipes/sft-fsdp", "--nproc", "2", "--set", "replica_check_steps=1")
    assert result.returncode == 2
    assert error_lines(result) == ["error: replica_check_steps: sft-fsdp shards every weight across the ranks, "
                                   "so there are no replicas to compare; leave it at 0"]
