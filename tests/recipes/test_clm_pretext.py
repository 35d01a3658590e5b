"""The clm-pretext recipe, run for real through ``launcher run`` on tiny models and the hotel handbook."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import (frozen_weight_copies_kept, heap_kept_for_reuse, logged_losses, lora_layers_fused,
                            read_metrics, run_launcher)

pytestmark = pytest.mark.slow(minutes=1)  # trains real models; make test starts the longest first


HANDBOOK = Path(__file__).resolve().parents[2] / "recipekit" / "datasets" / "hotel"
BLOCK = 64


def pretext(output_dir: Path, model: str, *extra: str, nproc: int = 1, expect: int = 0):
    """Run the recipe on the embedded handbook in blocks of 64 tokens; fail with its output."""
    overrides = [f"model_name={model}", f"output_dir={output_dir}", f"block_size={BLOCK}", "batch_size=4",
                 "max_steps=10", "learning_rate=1e-2", "warmup_ratio=0.0", "logging_steps=1", "save_steps=5",
                 "bf16=false", *extra]
    args = ["run", "recipes/clm-pretext", "--nproc", str(nproc)]
    for item in overrides:
        args += ["--set", item]
    result = run_launcher(*args)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def handbook(split: str) -> list[str]:
    return [json.loads(line)["text"] for line in (HANDBOOK / f"handbook_{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model):
    """One LoRA run of 10 steps with checkpoints at 5 and 10; the resume test continues a copy of it."""
    out = tmp_path_factory.mktemp("clm-pretext") / "lora"
    result = pretext(out, tiny_model)
    return out, result, read_metrics(out)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """A random 2-layer BERT masked LM with the embedded tokenizer plus a [MASK] token."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from recipekit import models

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(models.prepare_tokenizer())
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_lora_lowers_held_out_perplexity_and_every_output_loads(lora_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result, metrics = lora_run
    assert metrics["objective"] == "clm" and metrics["global_step"] == 10 and metrics["world_size"] == 1
    assert metrics["resumed_from"] is None
    assert metrics["perplexity_after"] < 0.9 * metrics["perplexity_before"]
    assert metrics["perplexity_before"] == pytest.approx(math.exp(metrics["eval_loss_before"]), rel=1e-9)
    assert metrics["perplexity_change"] == pytest.approx(metrics["perplexity_after"] / metrics["perplexity_before"] - 1)
    losses = logged_losses(metrics)
    assert len(losses) == 10 and losses[-1] < losses[0]
    first_row = metrics["log_history"][0]  # evaluated before step 1, so a resumed run finds it in the checkpoint
    assert first_row["step"] == 0 and first_row["eval_loss"] == metrics["eval_loss_before"]
    assert "held-out perplexity: before" in result.stdout
    assert f"held-out perplexity before training: {metrics['perplexity_before']:.3f}" in result.stderr
    assert (out / "loss.png").stat().st_size > 0 and list((out / "runs").rglob("events.out.tfevents*"))
    assert (out / "checkpoint-10" / "COMPLETE").is_file() and (out / "checkpoint-5" / "COMPLETE").is_file()
    assert f"block_size: {BLOCK}" in (out / "resolved_config.yaml").read_text()

    # Packing: each split is the documents' tokens plus one EOS each, cut into full blocks; only the
    # remainder shorter than a block is dropped.
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    for split in ("train", "eval"):
        stream = sum(len(ids) + 1 for ids in tokenizer(handbook(split))["input_ids"])
        assert metrics[f"{split}_tokens"] == metrics[f"{split}_blocks"] * BLOCK == stream // BLOCK * BLOCK
        assert metrics[f"{split}_tokens_dropped"] == stream % BLOCK

    adapter = AutoPeftModelForCausalLM.from_pretrained(out / "model")  # plain peft code
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # plain transformers code
    assert adapter.peft_config["default"].r == 16 and merged.config.num_hidden_layers == 2


def test_rerun_resumes_from_the_newest_complete_checkpoint(lora_run, tmp_path, tiny_model):
    first_dir, _, first = lora_run
    out = tmp_path / "resumed"
    shutil.copytree(first_dir, out)
    shutil.rmtree(out / "checkpoint-5")  # a half-written newer checkpoint must be skipped
    (out / "checkpoint-12").mkdir()

    result = pretext(out, tiny_model, "max_steps=15", "heap_reuse=false")
    assert heap_kept_for_reuse(result) == 0  # heap_reuse: false leaves glibc's malloc as it is
    metrics = read_metrics(out)
    assert metrics["resumed_from"] == str(out / "checkpoint-10") and metrics["global_step"] == 15
    assert [row["step"] for row in metrics["log_history"] if "loss" in row] == list(range(1, 16))
    assert logged_losses(metrics)[:10] == logged_losses(first)  # steps 1-10 come from the checkpoint
    # The starting perplexity was measured once, before step 1, and comes back from the checkpoint.
    assert metrics["perplexity_before"] == first["perplexity_before"]
    assert metrics["perplexity_after"] < first["perplexity_after"]
    assert "held-out perplexity before training" not in result.stdout + result.stderr
    assert "skipping checkpoint-12" in result.stderr
    assert (out / "checkpoint-15" / "COMPLETE").is_file() and not (out / "checkpoint-12").exists()


def test_bf16_on_cpu_keeps_the_frozen_weights_cast_and_fuses_lora_while_training(tmp_path, tiny_model):
    result = pretext(tmp_path / "bf16", tiny_model, "bf16=true", "max_steps=2", "save_steps=2")
    kept = frozen_weight_copies_kept(result)
    assert kept and kept[0] > 0  # the base model's projections under the adapters
    fused, = lora_layers_fused(result)
    assert fused[0] == fused[1] > 0  # every LoRA layer added its update inside the base matmul
    assert heap_kept_for_reuse(result) == 1
    assert read_metrics(tmp_path / "bf16")["global_step"] == 2


def test_masked_lm_with_all_weights_on_a_users_own_text_file_with_two_ddp_processes(tmp_path, tiny_encoder):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    for split in ("train", "eval"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"body": text}) + "\n" for text in handbook(split)))
    out = tmp_path / "mlm"
    # All weights: LoRA on a randomly initialised encoder learns too little in a few steps to show.
    result = pretext(out, tiny_encoder, "objective=mlm", "mlm_probability=0.3", "use_peft=false",
                     f"dataset_name={tmp_path / 'train.jsonl'}", f"eval_dataset_name={tmp_path / 'eval.jsonl'}",
                     "dataset_text_field=body", "learning_rate=3e-3", "batch_size=2", "replica_check_steps=1",
                     nproc=2)
    metrics = read_metrics(out)
    assert metrics["objective"] == "mlm" and metrics["world_size"] == 2 and metrics["global_step"] == 10
    # Evaluated before step 1 and still data-parallel: both ranks held the same weights after every step.
    assert metrics["eval_loss_before"] is not None and metrics["replicas_checked_at_steps"] == list(range(1, 11))
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.5
    assert "held-out masked-token perplexity: before" in result.stdout
    assert not (out / "merged").exists() and (out / "checkpoint-10" / "COMPLETE").is_file()

    trained = AutoModelForMaskedLM.from_pretrained(out / "model")  # plain transformers code
    initial = AutoModelForMaskedLM.from_pretrained(tiny_encoder)
    assert type(trained).__name__ == "BertForMaskedLM"
    assert AutoTokenizer.from_pretrained(out / "model").mask_token == "[MASK]"
    embeddings = [model.get_input_embeddings().weight for model in (trained, initial)]
    assert not torch.allclose(*embeddings)  # the saved weights are the trained ones


def test_bad_input_is_refused_before_any_model_loads(tmp_path, tiny_model):
    out = tmp_path / "refused"
    result = pretext(out, tiny_model, "objective=mlm", "block_size=4096", expect=2)
    assert result.stderr.splitlines() == [
        "error: objective: mlm needs a tokenizer with a mask token; 'tiny-random-llama' has none "
        "(use an encoder such as BERT/RoBERTa, or objective: clm)",
        "error: objective: mlm needs a model with a masked-LM head; 'llama' has none",
        "error: block_size: 4096 is longer than the model's max_position_embeddings (2048)"]

    # Config cross-checks come before the data is read, and the data before the model.
    result = pretext(out, tiny_model, "objective=mlm", "load_in_8bit=true", "dataset_text_field=body", expect=2)
    assert result.stderr.splitlines() == ["error: load_in_8bit: 4-bit/8-bit loading is supported with "
                                          "objective: clm only"]
    result = pretext(out, tiny_model, "dataset_text_field=body", "block_size=4096", expect=2)
    assert result.stderr.splitlines() == ["error: dataset_text_field: column 'body' not found in "
                                          "'hotel-handbook'; columns found: text"]
    assert not out.exists()
