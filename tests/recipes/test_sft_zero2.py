"""The sft-zero2 recipe: SFT under DeepSpeed ZeRO-2 on CPU (DS_ACCELERATOR=cpu), 2 processes and 1."""

from __future__ import annotations

import json

import pytest

from tests.conftest import heap_kept_for_reuse, logged_losses, read_metrics, run_launcher
from tests.recipes.test_sft import sft

pytestmark = pytest.mark.slow(minutes=2)  # trains real models; make test starts the longest first


def zero2(out, tiny_model, small_hotel, *extra):
    return sft(out, tiny_model, small_hotel, "eval_answer_field=null", *extra, nproc=2, recipe="sft-zero2")


def test_trains_with_two_ranks_and_resumes_with_the_engine_checkpoint(tmp_path, tiny_model, small_hotel):
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "z2"
    result = zero2(out, tiny_model, small_hotel, "max_steps=4", "save_steps=2", "replica_check_steps=1")
    first = read_metrics(out)
    assert first["world_size"] == 2 and first["global_step"] == 4
    # Evaluated inside the engine's train() before step 1, and the ranks held the same weights after every step.
    assert first["eval_loss_after"] < first["eval_loss_before"]
    assert first["replicas_checked_at_steps"] == [1, 2, 3, 4]
    losses = logged_losses(first)
    assert losses[-1] < losses[0]
    assert (out / "checkpoint-4" / "global_step4").is_dir()  # the DeepSpeed engine's own checkpoint
    ds = json.loads((out / "deepspeed_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 2 * 2
    assert "auto" not in json.dumps(ds)
    assert ds["optimizer"]["params"]["torch_adam"] is True  # no GPU: torch's fused AdamW, nothing to compile
    assert "deepspeed_shm_comm" not in result.stdout + result.stderr  # nor the all-reduce only AutoTP calls
    assert heap_kept_for_reuse(result) == 1  # under the engine too, freed memory is reused while training on CPU

    zero2(out, tiny_model, small_hotel, "max_steps=6", "save_steps=2")
    resumed = read_metrics(out)
    assert resumed["resumed_from"] == str(out / "checkpoint-4") and resumed["global_step"] == 6
    assert resumed["eval_loss_before"] == first["eval_loss_before"]  # from the checkpoint's log history
    assert resumed["replicas_checked_at_steps"] == [6]  # the default: at checkpoints and the last step
    AutoPeftModelForCausalLM.from_pretrained(out / "model")

    # Started again once finished: the engine loads the last checkpoint and trains no step past it.
    result = zero2(out, tiny_model, small_hotel, "max_steps=6", "save_steps=2")
    again = read_metrics(out)
    assert "nothing left to train: resumed at step 6 of 6" in result.stdout and again["global_step"] == 6
    assert again["eval_loss_after"] == pytest.approx(resumed["eval_loss_after"], rel=1e-6)
    assert not (out / "checkpoint-7").exists()


def test_one_process_without_torchrun_trains_as_the_sft_recipe_does(tmp_path, tiny_model, small_hotel):
    """`launcher run recipes/sft-zero2` on one device starts no torchrun; the engine still gets its process
    group (DeepSpeed would otherwise look for an MPI launcher), and trains what sft trains."""
    runs, logs = {}, {}
    for recipe, heap_reuse in (("sft", "true"), ("sft-zero2", "false")):  # the heap changes no result either
        out = tmp_path / recipe
        logs[recipe] = sft(out, tiny_model, small_hotel, "eval_answer_field=null", "max_steps=3", "save_steps=100",
                           f"heap_reuse={heap_reuse}", recipe=recipe)
        runs[recipe] = read_metrics(out)
    assert heap_kept_for_reuse(logs["sft"]) == 1 and heap_kept_for_reuse(logs["sft-zero2"]) == 0
    engine, plain = runs["sft-zero2"], runs["sft"]
    assert engine["world_size"] == 1 and engine["global_step"] == 3
    assert (tmp_path / "sft-zero2" / "checkpoint-3" / "global_step3").is_dir()
    assert logged_losses(engine) == pytest.approx(logged_losses(plain), rel=1e-5)
    assert engine["eval_loss_after"] == pytest.approx(plain["eval_loss_after"], rel=1e-5)


def test_quantization_is_refused_before_anything_loads():
    result = run_launcher("run", "recipes/sft-zero2", "--nproc", "2", "--set", "load_in_4bit=true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "load_in_4bit: bitsandbytes quantization is not supported under ZeRO-2" in result.stderr


def test_per_parameter_learning_rates_are_refused_naming_the_key():
    """DeepSpeed builds its own optimizer from its config, so layer_lr_decay and lr_multipliers would do nothing."""
    for key, value in (("layer_lr_decay", "0.9"), ("lr_multipliers", "{lm_head: 0.1}")):
        result = run_launcher("validate", "recipes/sft-zero2", "--set", f"{key}={value}")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"error: {key}: per-parameter learning rates are not supported here (DeepSpeed builds the " \
               "optimizer); use recipes/sft" in result.stderr


@pytest.mark.gpu
def test_one_process_on_one_gpu_in_bf16(tmp_path, tiny_model, small_hotel):
    """The GPU benchmark's sft-zero2 row in small: one process, no torchrun, DeepSpeed's CUDA fused Adam where it
    can be loaded or compiled, torch's fused AdamW (with a warning) where it cannot."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: run `make test-gpu` on a GPU machine")
    out = tmp_path / "gpu"
    sft(out, tiny_model, small_hotel, "eval_answer_field=null", "bf16=true", recipe="sft-zero2")
    metrics = read_metrics(out)
    losses = logged_losses(metrics)
    assert metrics["device"].startswith("cuda") and metrics["world_size"] == 1 and losses[-1] < losses[0]
