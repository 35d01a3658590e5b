"""bench/: the runner's plan is fair, its counting and FLOPs are right, and a real run writes real numbers.

Timings are never asserted here; they live in `make bench`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import flops, run

SHAPE = dict(params_total=1000, params_trainable=1000, params_embedding=300, params_tied_lm_head=300,
             num_layers=2, num_heads=4, head_dim=8)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def overrides(argv: list[str]) -> dict[str, str]:
    return dict(item.removeprefix("--set=").split("=", 1) for item in argv if item.startswith("--set="))


def test_cpu_plan_gives_both_sides_the_same_model_data_length_steps_and_lora(tmp_path):
    rows = run.plan("cpu", tmp_path, tmp_path / "hotel", "/models/smol", 256, 30, cuda=False)
    assert [r.name for r in rows] == ["trl-sft-lora", "sft-lora", "trl-sft-full", "sft-full"]
    peer, ours = rows[:2]
    assert (peer.tool, ours.tool, ours.baseline) == ("trl sft", "sft", peer.name)
    shipped = run.recipe_defaults()
    ours_set = {**shipped, **overrides(ours.argv)}
    assert ours.argv[:3] == ["-m", "bench.ours", str(run.SFT / "train.py")]
    assert option(peer.argv, "--model_name_or_path") == ours_set["model_name"] == "/models/smol"
    assert option(peer.argv, "--dataset_name") == ours_set["dataset_name"] == str(tmp_path / "hotel")
    assert option(peer.argv, "--max_length") == ours_set["seq_length"] == "256"
    assert option(peer.argv, "--max_steps") == ours_set["max_steps"] == "30"
    assert "--use_peft" in peer.argv and ours_set["use_peft"] == "true" and ours_set["peft_top_layers"] == "null"
    for peer_flag, key in (("--lora_r", "peft_lora_r"), ("--lora_alpha", "peft_lora_alpha"),
                           ("--lora_dropout", "peft_lora_dropout"), ("--lora_target_modules", "peft_target_modules")):
        assert option(peer.argv, peer_flag) == str(ours_set[key])
    # Everything else on the peer is TRL's default (--use_cpu only because TRL's bf16 default needs it on a CPU).
    assert set(a for a in peer.argv if a.startswith("--")) == {
        "--model_name_or_path", "--dataset_name", "--output_dir", "--max_length", "--max_steps", "--use_cpu",
        "--use_peft", "--lora_r", "--lora_alpha", "--lora_dropout", "--lora_target_modules"}

    peer_full, ours_full = rows[2:]
    assert "--use_peft" not in peer_full.argv and overrides(ours_full.argv)["use_peft"] == "false"
    assert ours_full.baseline == peer_full.name and option(peer_full.argv, "--max_steps") == "30"


def test_only_keeps_the_peer_of_a_kept_row(tmp_path):
    rows = run.plan("gpu", tmp_path, tmp_path, "m", 2048, 5, cuda=True)
    assert [r.name for r in run.select(rows, "sft-lora")] == ["trl-sft-lora", "sft-lora"]
    with pytest.raises(SystemExit, match="unknown row"):
        run.select(rows, "sft-lorra")


def test_batch_tokens_counts_padded_and_packed_batches():
    import torch

    from bench.probe import batch_tokens  # imports transformers: only in the test that needs it

    padded = {"input_ids": torch.ones(2, 5, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
              "labels": torch.tensor([[-100, 5, 5, -100, -100], [-100, -100, 5, 5, 5]])}
    assert [int(v) for v in batch_tokens(padded)] == [8, 3 * 3 + 5 * 5, 5]
    packed = {"input_ids": torch.ones(1, 6, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0]]),
              "labels": torch.tensor([[-100, 5, 5, -100, 5, 5]])}
    assert [int(v) for v in batch_tokens(packed)] == [6, 9 + 4 + 1, 4]
    del packed["labels"]  # the caller computes the loss itself: loss tokens are not countable
    assert batch_tokens(packed)[2] is None


def test_flops_follow_the_stated_conventions():
    # 6·N·tokens with N = params without the embedding table but with the tied head, + 12·L·H·Q·Σ len².
    full = flops.model_flops(SHAPE, tokens=10, doc_len_sq=40, lora=False)
    assert full == 6 * 1000 * 10 + 12 * 2 * 4 * 8 * 40
    lora_shape = {**SHAPE, "params_trainable": 100}  # 900 frozen
    assert flops.model_flops(lora_shape, 10, 40, lora=True) == pytest.approx(full * (2 + 100 / 900) / 3)
    assert flops.mfu(2e12, 2.0, peak=1.0) == pytest.approx(1.0)
    assert flops.mfu(1e12, 1.0, peak=None) is None
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and flops.peak_tflops("NVIDIA H100 PCIe") == 756.0


@pytest.mark.slow
def test_gpu_path_runs_on_cpu_with_a_tiny_model_and_writes_real_numbers(tmp_path):
    """The GPU suite's path end to end (random model from a config, peer + recipe, MFU), on a CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU this would run the full-size suite: use make bench there")
    code = run.main(["--suite", "gpu", "--shape", "tiny", "--only", "sft-lora", "--steps", "2", "--seq-length", "256",
                     "--peak-tflops", "1", "--timeout", "300", "--out", str(tmp_path)])
    assert code == 0
    (result_file,) = tmp_path.glob("*-gpu.json")
    result = json.loads(result_file.read_text())
    assert result["suite"] == "gpu" and result["seq_length"] == 256 and result["steps"] == 2
    assert len(result["load_before"]) == 3 and result["environment"]["versions"]["trl"]
    assert "no GPU in this run" in result["goals"][0]
    peer, ours = result["rows"]
    assert (peer["name"], ours["name"]) == ("trl-sft-lora", "sft-lora")
    for row in (peer, ours):
        assert row["steps"] == 2 and row["device"] == "cpu" and row["model"]["head_dim"] == 16
        assert row["tokens_timed"] > 0 and math.isclose(row["tokens_per_s"] * row["timed_s"], row["tokens_timed"])
        assert 0 < row["time_to_first_step_s"] < row["process_wall_s"]
        assert row["peak_memory_kind"] == "rss" and row["peak_memory_bytes"] > 100 * 2**20
        assert 0 < row["mfu"] < 1 and row["flops_per_token"] > 6 * flops.dense_params(row["model"]) * 0.66
        assert row["foreign_cpu_share"] is not None
    # Each side really ran with its own settings: TRL defaults vs the recipe's packed batches.
    assert peer["settings"]["gradient_checkpointing"] is True and peer["settings"]["packing"] is False
    assert ours["settings"]["packing"] is True and ours["settings"]["per_device_train_batch_size"] == 4
    assert peer["tokens_per_step"] <= 8 * 256 and ours["tokens_per_step"] <= 4 * 256
    assert 0 < peer["loss_tokens_per_s"] <= peer["tokens_per_s"]
    assert ours["ratio_vs_peer"] == pytest.approx(ours["tokens_per_s"] / peer["tokens_per_s"])
    table = Path(result_file.with_suffix(".md")).read_text()
    assert "| sft-lora | `sft` | yes |" in table and "Command: `python -m bench.run --suite gpu" in table
