"""bench/: the runner's plan is fair, its counting and FLOPs are right, and a real run writes real numbers.

Timings are never asserted here; they live in `make bench`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench import flops, run
from tests.conftest import REPO, processes_mentioning

SHAPE = dict(params_total=1000, params_trainable=1000, params_embedding=300, params_tied_lm_head=300,
             num_layers=2, num_heads=4, head_dim=8)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def overrides(argv: list[str]) -> dict[str, str]:
    return dict(item.removeprefix("--set=").split("=", 1) for item in argv if item.startswith("--set="))


def test_cpu_plan_gives_every_side_the_same_model_data_length_steps_and_lora(tmp_path):
    rows = run.plan("cpu", tmp_path, tmp_path / "hotel", "/models/smol", 256, 30, cuda=False)
    assert [r.name for r in rows] == ["trl-sft-lora", "trl-sft-lora-tuned", "sft-lora",
                                      "trl-sft-full", "trl-sft-full-tuned", "sft-full"]
    peer, tuned, ours = rows[:3]
    assert (peer.tool, tuned.tool, ours.tool) == ("trl sft", "trl sft", "sft")
    assert ours.baselines == {"defaults": peer.name, "tuned": tuned.name}
    shipped = run.recipe_defaults()
    ours_set = {**shipped, **overrides(ours.argv)}
    assert ours.argv[:3] == ["-m", "bench.ours", str(run.SFT / "train.py")]
    for side in (peer, tuned):
        assert option(side.argv, "--model_name_or_path") == ours_set["model_name"] == "/models/smol"
        assert option(side.argv, "--dataset_name") == ours_set["dataset_name"] == str(tmp_path / "hotel")
        assert option(side.argv, "--max_length") == ours_set["seq_length"] == "256"
        assert option(side.argv, "--max_steps") == ours_set["max_steps"] == "30"
        assert "--use_peft" in side.argv and ours_set["use_peft"] == "true" and ours_set["peft_top_layers"] == "null"
        for peer_flag, key in (("--lora_r", "peft_lora_r"), ("--lora_alpha", "peft_lora_alpha"),
                               ("--lora_dropout", "peft_lora_dropout"),
                               ("--lora_target_modules", "peft_target_modules")):
            assert option(side.argv, peer_flag) == str(ours_set[key])
    # Everything else on the defaults peer is TRL's default (--use_cpu only because TRL's bf16 default needs it).
    shared = {"--model_name_or_path", "--dataset_name", "--output_dir", "--max_length", "--max_steps", "--use_cpu",
              "--use_peft", "--lora_r", "--lora_alpha", "--lora_dropout", "--lora_target_modules"}
    assert set(a for a in peer.argv if a.startswith("--")) == shared
    # The tuned peer: packed padding-free batches of the recipe's size, no checkpointing, bf16; nothing else.
    tuning = {"--packing": "true", "--padding_free": "true", "--gradient_checkpointing": "false", "--bf16": "true",
              "--per_device_train_batch_size": str(shipped["batch_size"])}
    assert set(a for a in tuned.argv if a.startswith("--")) == shared | set(tuning)
    assert all(option(tuned.argv, flag) == value for flag, value in tuning.items())
    assert (shipped["packing"], shipped["gradient_checkpointing"], shipped["bf16"]) == (True, False, True)

    peer_full, tuned_full, ours_full = rows[3:]
    assert "--use_peft" not in peer_full.argv + tuned_full.argv and overrides(ours_full.argv)["use_peft"] == "false"
    assert ours_full.baselines == {"defaults": peer_full.name, "tuned": tuned_full.name}
    assert option(tuned_full.argv, "--max_steps") == "30"


def test_tuned_peer_flags_are_ones_trls_parser_reads_with_the_meaning_given():
    from trl.scripts import sft

    rows = run.plan("cpu", Path("/w"), Path("/d"), "/m", 256, 30, cuda=False)
    tuned = rows[1]
    _, training, _, _ = sft.make_parser().parse_args_and_config(tuned.argv[2:])[:4]
    assert training.packing and training.padding_free and not training.gradient_checkpointing and training.bf16
    assert training.per_device_train_batch_size == run.recipe_defaults()["batch_size"]
    _, training, _, _ = sft.make_parser().parse_args_and_config(rows[0].argv[2:])[:4]
    assert not training.packing and not training.padding_free and training.gradient_checkpointing
    assert training.per_device_train_batch_size == 8


def test_scaling_plan_runs_the_tuned_peer_and_the_recipe_at_each_length_on_one_and_two_processes(tmp_path):
    rows = run.plan("scaling", tmp_path, tmp_path / "hotel", "/m", 256, 4, cuda=False)
    assert len(rows) == 2 * len(run.SCALING_LENGTHS) * len(run.SCALING_PROCESSES) == 16
    seen = set()
    for peer, ours in zip(rows[::2], rows[1::2]):
        assert ours.baselines == {"tuned": peer.name} and peer.tool == "trl sft" and ours.tool == "sft"
        assert peer.seq_length == ours.seq_length and peer.processes == ours.processes
        assert option(peer.argv, "--max_length") == overrides(ours.argv)["seq_length"] == str(ours.seq_length)
        assert option(peer.argv, "--per_device_train_batch_size") == overrides(ours.argv)["batch_size"] == "1"
        for row in (peer, ours):
            if row.processes == 1:
                assert row.argv[:2] == ["-m", "bench.peer" if row is peer else "bench.ours"]
            else:
                assert row.argv[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        seen.add((ours.seq_length, ours.processes))
    assert seen == {(n, p) for n in (256, 512, 1024, 2048) for p in (1, 2)}


def test_ablation_keeps_one_row_per_cpu_path_of_sft_training_each_switching_that_path_off(tmp_path):
    from bench import ours

    rows = {r.name: r for r in run.plan("ablation", tmp_path, tmp_path, "/m", 256, 20, cuda=False)}
    switched = {ours.ABLATIONS[name]: row for row in rows.values() for name in row.env}
    assert set(switched) == {"plain_loss", "trained_positions", "document_attention", "frozen_prefix",
                             "frozen_weight_copies", "packed_frozen_weights", "fused_lora", "heap_reuse"}
    assert all(len(row.env) == 1 and row.baselines.get("shipped") in rows for row in switched.values())
    # Each pair differs only in the switch, and per-document attention's pair runs rows long enough for it.
    for path, row in switched.items():
        shipped = rows[row.baselines["shipped"]]
        assert overrides(row.argv) == overrides(shipped.argv) | {"output_dir": overrides(row.argv)["output_dir"]}
    assert overrides(switched["frozen_prefix"].argv)["num_train_epochs"] == "2"


def test_only_keeps_the_peers_of_a_kept_row_and_the_matmul_limit(tmp_path):
    rows = run.plan("gpu", tmp_path, tmp_path, "m", 2048, 5, cuda=True)
    assert [r.name for r in run.select(rows, "sft-lora")] == ["trl-sft-lora", "trl-sft-lora-tuned", "sft-lora"]
    with pytest.raises(SystemExit, match="unknown row"):
        run.select(rows, "sft-lorra")
    limit = run.limit_scenario("/m", 512)
    assert [r.name for r in run.select([limit, *rows], "sft-full")][0] == run.MATMUL_LIMIT


def test_gpu_plan_runs_the_same_full_fine_tuning_under_fsdp_and_zero2_and_compares_them(tmp_path):
    rows = {r.name: r for r in run.plan("gpu", tmp_path, tmp_path / "hotel", "/m", 2048, 30, cuda=True)}
    full, fsdp, zero2 = rows["sft-full"], rows["sft-fsdp"], rows["sft-zero2"]
    assert fsdp.argv[:3] == ["-m", "bench.ours", str(run.SFT_FSDP / "train.py")] and fsdp.tool == "sft-fsdp"
    assert zero2.argv[:3] == ["-m", "bench.ours", str(run.SFT_ZERO2 / "train.py")] and zero2.tool == "sft-zero2"
    assert zero2.baselines == {"fsdp": "sft-fsdp"} and not fsdp.lora and not zero2.lora
    assert [r.name for r in run.select(list(rows.values()), "sft-zero2")] == ["sft-fsdp", "sft-zero2"]
    # The same run as sft-full's in every key the recipes share; sft-fsdp has no LoRA keys to set.
    same = {key: value for key, value in overrides(full.argv).items() if key != "output_dir"}
    assert {k: v for k, v in overrides(zero2.argv).items() if k != "output_dir"} == same
    lora_keys = {"use_peft", "merge_adapter", "peft_top_layers"}
    assert {k: v for k, v in overrides(fsdp.argv).items() if k != "output_dir"} == \
        {k: v for k, v in same.items() if k not in lora_keys}
    assert not lora_keys & set(run.recipe_defaults(run.SFT_FSDP))  # so the recipe would refuse them
    with pytest.raises(ValueError, match="sft-fsdp has no LoRA keys"):
        run.ours("x", tmp_path, tmp_path, "/m", 2048, 30, lora=True, recipe=run.SFT_FSDP)


def test_gpu_goals_want_the_tuned_peer_beaten_and_zero2_within_a_tenth_of_fsdp():
    def row(name, ratios):
        return {"name": name, "kind": "training", "device": "cuda:0", "ratios": ratios, "mfu": 0.5}

    rows = {"sft-full": row("sft-full", {"defaults": 3.0, "tuned": 1.7}), "sft-lora": row("sft-lora", {"tuned": 1.9}),
            "sft-fsdp": row("sft-fsdp", {}), "sft-zero2": row("sft-zero2", {"fsdp": 0.92})}
    goals = run.goals("gpu", rows)
    assert goals[0] == "sft-full: 1.70× the tuned peer's tokens/s (goal ≥ 1.8×): NOT met"
    assert goals[1] == "sft-lora: 1.90× the tuned peer's tokens/s (goal ≥ 1.8×): met"
    assert goals[4] == "sft-zero2: 0.92× sft-fsdp's tokens/s (goal: within 10%): met"
    for ratio, verdict in ((0.89, "NOT met"), (1.08, "met"), (1.11, "NOT met")):
        rows["sft-zero2"]["ratios"] = {"fsdp": ratio}
        assert run.goals("gpu", rows)[4].endswith(f"(goal: within 10%): {verdict}")


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


def test_a_hand_written_loop_is_probed_through_its_observer_on_the_items_it_trained(tmp_path, monkeypatch):
    """The probe as ``recipekit.loop.observed`` drives it: tokens, squared document lengths and loss tokens of
    the packed items, never the padding their micro-batch adds."""
    import torch

    from bench.probe import Probe, batch_tokens
    from recipekit import loop
    from recipekit.sft_data import collate_items

    items = [{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1]},
             {"input_ids": [1, 2], "labels": [-100, 2], "position_ids": [0, 1]}]
    padded = collate_items(items, pad_id=0, device="cpu")
    assert padded["input_ids"].numel() == 10 and int(batch_tokens(padded)[0]) == 10  # what a forward hook would see

    out = tmp_path / "row.probe.json"
    monkeypatch.setenv(run.OUT_ENV, str(out))
    monkeypatch.setattr(loop, "added_observers", [Probe])
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    model.config = type("Config", (), {"num_attention_heads": 2, "num_hidden_layers": 1, "hidden_size": 4,
                                       "vocab_size": 10, "model_type": "toy"})()
    config = {"batch_size": 2, "seq_length": 8, "bf16": True, "packing": True, "learning_rate": 0.1}
    with loop.observed(model, torch.device("cpu"), config) as step_end:
        step_end(items)
        step_end(items[:1])
    record = json.loads(out.read_text())
    # Documents of 3, 2 and 2 tokens, then of 3 and 2: the squared lengths 9 + 4 + 4, then 9 + 4 more.
    assert [(s["tokens"], s["doc_len_sq"], s["loss_tokens"]) for s in record["steps"]] == [(7, 17, 4), (12, 30, 7)]
    assert record["global_step"] == 2 and record["device"] == "cpu" and record["model"]["params_total"] == 90
    assert record["settings"]["per_device_train_batch_size"] == 2 and record["settings"]["max_length"] == 8
    assert record["settings"]["bf16"] is True and record["settings"]["padding_free"] is None


def test_flops_follow_the_stated_conventions():
    # 6·N·tokens with N = params without the embedding table but with the tied head, + 12·L·H·Q·Σ len².
    full = flops.model_flops(SHAPE, tokens=10, doc_len_sq=40, lora=False)
    assert full == 6 * 1000 * 10 + 12 * 2 * 4 * 8 * 40
    lora_shape = {**SHAPE, "params_trainable": 100}  # 900 frozen
    assert flops.model_flops(lora_shape, 10, 40, lora=True) == pytest.approx(full * (2 + 100 / 900) / 3)
    assert flops.mfu(2e12, 2.0, peak=1.0) == pytest.approx(1.0)
    assert flops.mfu(1e12, 1.0, peak=None) is None
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and flops.peak_tflops("NVIDIA H100 PCIe") == 756.0


def test_merge_ranks_sums_tokens_per_step_and_keeps_the_largest_process(tmp_path, monkeypatch):
    from bench.probe import Probe

    out = tmp_path / "row.probe.json"
    monkeypatch.setenv(run.OUT_ENV, str(out))
    monkeypatch.setenv("RANK", "1")
    assert Probe().out_path == tmp_path / "row.probe.rank1.json"
    monkeypatch.setenv("RANK", "0")
    assert Probe().out_path == out
    for path in (out, tmp_path / "row.probe.rank1.json", tmp_path / "row.probe.rank10.json", tmp_path / "other.json"):
        path.write_text("{}")
    assert run.rank_outputs(out) == [out, tmp_path / "row.probe.rank1.json", tmp_path / "row.probe.rank10.json"]

    def record(tokens, rss, loss=1):
        return {"steps": [{"at": 1.0 + i, "tokens": t, "doc_len_sq": 2 * t, "loss_tokens": loss}
                          for i, t in enumerate(tokens)], "peak_rss_bytes": rss}

    merged = run.merge_ranks([record([10, 20], 5), record([11, 22], 7, loss=None)])
    assert [s["tokens"] for s in merged["steps"]] == [21, 42] and [s["at"] for s in merged["steps"]] == [1.0, 2.0]
    assert [s["doc_len_sq"] for s in merged["steps"]] == [42, 84] and merged["steps"][0]["loss_tokens"] is None
    assert (merged["peak_rss_bytes"], merged["peak_rss_sum_bytes"], merged["processes"]) == (7, 12, 2)
    single = run.merge_ranks([record([10, 20], 5)])
    assert (single["steps"][1]["tokens"], single["processes"], single["peak_rss_sum_bytes"]) == (20, 1, 5)


def probe_record(tokens_per_step, seconds_per_step, bf16=True, lora=True):
    steps = [{"at": 100.0 + i * seconds_per_step, "tokens": (i + 1) * tokens_per_step,
              "doc_len_sq": (i + 1) * tokens_per_step * 64, "loss_tokens": None} for i in range(3)]
    return {"steps": steps, "launched_at": 90.0, "device": "cpu", "settings": {"bf16": bf16}, "model": {**SHAPE, "params_trainable": 100},
            "peak_rss_bytes": 2**30, "peak_rss_sum_bytes": 2**30, "processes": 1, "wall_s": 20.0, "cpu_s": 40.0,
            "foreign_cpu_s": 1.0, "torch_threads": 2, "cuda_max_allocated_bytes": None}


def test_cpu_rows_get_their_mfu_against_the_matmul_limit_of_their_precision_and_weights():
    limit = {"limits_tflops": {"bfloat16": {"frozen": 2e-6, "full": 1e-6}, "float32": {"frozen": 5e-7, "full": 4e-7}}}
    scenario = run.Scenario("sft-lora", "sft", True, ["-m", "bench.ours"], {"tuned": "p"})
    row = run.summarize(scenario, probe_record(100, 2.0), None, limit)
    assert row["matmul_limit_tflops"] == 2e-6 and row["mfu"] is None
    assert row["cpu_mfu"] == pytest.approx(row["model_tflops_per_s"] / 2e-6)
    fp32_full = run.summarize(run.Scenario("x", "sft", False, []), probe_record(100, 2.0, bf16=False), None, limit)
    assert fp32_full["matmul_limit_tflops"] == 4e-7
    assert run.summarize(scenario, probe_record(100, 2.0), None, None)["cpu_mfu"] is None


def test_repeated_rounds_report_each_rows_median_run_and_the_fastest_limit():
    def limit_record(tflops):
        return {"rows": 512, "repeats": 3, "timings": [], "wall_s": 10.0, "foreign_cpu_s": 0.0,
                "limits_tflops": {"bfloat16": {"frozen": tflops, "full": tflops},
                                  "float32": {"frozen": tflops / 4, "full": tflops / 4}}}

    limit = run.Scenario(run.MATMUL_LIMIT, "torch.matmul", None, [])
    ours = run.Scenario("sft-lora", "sft", True, [], {"tuned": "p"}, note="as shipped")
    runs = {limit.name: [limit_record(x) for x in (5e-7, 1e-6, 2e-7)],
            ours.name: [probe_record(100, seconds) for seconds in (1.0, 2.0, 0.5)]}  # 100, 50, 200 tokens/s
    done = run.best_of_runs([limit, ours], runs, None)
    assert done[limit.name]["limits_tflops"]["bfloat16"]["full"] == 1e-6  # what the machine can do
    row = done[ours.name]
    assert row["tokens_per_s"] == pytest.approx(100) and row["tokens_per_s_runs"] == pytest.approx([50, 100, 200])
    assert row["matmul_limit_tflops"] == 1e-6
    assert run.note(row) == "as shipped; median of 3 runs: 50, 100, 200 tokens/s"
    assert run.note({**row, "tokens_per_s_runs": [100.0]}) == "as shipped"
    # A fourth round that failed leaves the three that ran as the row, and says so.
    failed = {ours.name: [{"why": "exit code 1", "log": "sft-lora.log", "log_tail": ""}]}
    row = run.best_of_runs([limit, ours], runs, None, failed)[ours.name]
    assert row["kind"] == "training" and row["tokens_per_s"] == pytest.approx(100)
    assert run.note(row) == "as shipped; median of 3 runs: 50, 100, 200 tokens/s; 1 more run(s) FAILED"


def test_cpu_goals_and_table_compare_the_recipe_with_both_peers_and_the_limit():
    limit = {"name": run.MATMUL_LIMIT, "kind": run.MATMUL_LIMIT, "tool": "torch.matmul", "rows": 512, "note": "",
             "limits_tflops": {"bfloat16": {"frozen": 1e-6, "full": 1e-6}, "float32": {"frozen": 5e-7, "full": 5e-7}},
             "foreign_cpu_share": 0.01}
    rows = {run.MATMUL_LIMIT: limit}
    for name, tool, tokens, lora in (("trl-sft-lora", "trl sft", 50, True), ("trl-sft-lora-tuned", "trl sft", 100, True),
                                     ("sft-lora", "sft", 250, True), ("trl-sft-full-tuned", "trl sft", 100, False),
                                     ("sft-full", "sft", 150, False)):
        baselines = {"defaults": "trl-sft-lora", "tuned": "trl-sft-lora-tuned"} if name == "sft-lora" else \
            {"tuned": "trl-sft-full-tuned"} if name == "sft-full" else {}
        row = run.summarize(run.Scenario(name, tool, lora, [], baselines), probe_record(tokens, 1.0, lora=lora),
                            None, limit)
        row["ratios"] = {kind: tokens / rows[peer]["tokens_per_s"] for kind, peer in baselines.items()}
        rows[name] = row
    rows["sft-lora"]["cpu_mfu"] = 0.55
    goals = run.goals("cpu", rows)
    assert goals[0] == "sft-lora: 2.50× the tuned peer's tokens/s (goal ≥ 2.0×): met"
    assert goals[1] == "sft-lora: 55.0% of the measured matmul limit (goal ≥ 50%): met"
    assert goals[2] == "sft-full: 1.50× the tuned peer's tokens/s (goal ≥ 1.6×): NOT met"
    assert goals[4] == "sft-full vs the defaults peer: not measured in this run"
    result = {"suite": "cpu", "date": "d", "model": "m", "seq_length": 256, "steps": 3, "load_before": [1, 1, 1],
              "load_after": [1, 1, 1], "wall_s": 60, "command": "python -m bench.run", "goals": goals,
              "rows": list(rows.values()),
              "environment": {"host": "h", "cpu": "c", "threads": 2, "cuda_device": None,
                              "versions": {"torch": "t", "transformers": "x", "trl": "y", "peft": "z"}}}
    table = run.markdown(result)
    assert "| tokens/s | vs defaults | vs tuned | time to first step |" in table
    assert "| sft-lora | `sft` | yes | 256 | 1 | 250 | 5.00× | 2.50× |" in table
    assert "| 55.0% of limit |" in table
    assert "| matmul-limit | `torch.matmul` |" in table and "bfloat16 0.000 frozen" in table
    # A disturbed limit row makes a row look faster than the limit: that is reported, never judged met.
    rows["sft-lora"]["cpu_mfu"] = 2.88
    assert run.goals("cpu", rows)[1] == ("sft-lora: 288.0% of the measured matmul limit, which is impossible: "
                                         "that measurement was disturbed; goal not judged, rerun on an idle machine")


def test_a_second_run_on_the_same_day_gets_its_own_files(tmp_path):
    assert run.unused_stem(tmp_path, "vm-2026-12-06") == "vm-2026-12-06"
    (tmp_path / "vm-2026-12-06.json").write_text("{}")
    assert run.unused_stem(tmp_path, "vm-2026-12-06") == "vm-2026-12-06-2"
    (tmp_path / "vm-2026-12-06-2.md").write_text("")
    assert run.unused_stem(tmp_path, "vm-2026-12-06") == "vm-2026-12-06-3"


def test_bad_options_are_one_line_errors_and_leave_no_work_dir(tmp_path, monkeypatch, capsys):
    bounds = run.recipe_bounds("seq_length")
    shortest, longest = bounds["min"], bounds["max"]
    for argv, message in ((["--threads", "0"], "--threads: at least 1"), (["--timeout", "0"], "--timeout: at least 1"),
                          (["--peak-tflops", "0"], "--peak-tflops: a positive number of TFLOP/s"),
                          (["--seq-length", str(shortest - 1)], f"--seq-length: must be >= {shortest}, got "),
                          (["--seq-length", str(longest + 1)], f"--seq-length: must be <= {longest}, got "),
                          (["--model", str(tmp_path / "missing")], "--model: model directory not found"),
                          (["--model", str(tmp_path)], "holds no config.json")):
        with pytest.raises(SystemExit) as exit_:
            run.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err, argv
    assert run.parse_args(["--seq-length", str(shortest), "--threads", "1"]).seq_length == shortest
    assert run.parse_args(["--seq-length", str(longest)]).seq_length == longest
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit, match="--only: unknown row"):
        run.main(["--only", "no-such-row", "--dry-run"])
    assert not list(tmp_path.glob("bench-*"))  # the work dir made before the rows were known is gone


@pytest.mark.slow
def test_a_failing_row_is_recorded_while_the_other_rows_go_on_measuring(tmp_path, tiny_model):
    """The real matmul-limit row next to stand-ins for tools that go wrong, with the runner's process contract
    (a command, and a probe record at $BENCH_PROBE_OUT): one crashes, one exits 0 without a record, one
    records a single optimizer step, which cannot be timed. Two rounds."""
    from recipekit import models

    crash = ["-c", "print('RuntimeError: out of memory', flush=True); raise SystemExit(3)"]
    one_step = ["-c", "import json, os; json.dump({'steps': [{'at': 1.0, 'tokens': 9, 'doc_len_sq': 81, "
                "'loss_tokens': None}], 'peak_rss_bytes': 1}, open(os.environ['BENCH_PROBE_OUT'], 'w'))"]
    rows = [run.limit_scenario(models.resolve(tiny_model), 64),
            run.Scenario("trl-sft-lora", "trl sft", True, ["-c", "pass"]),
            run.Scenario("trl-sft-lora-tuned", "trl sft", True, one_step),
            run.Scenario("sft-lora", "sft", True, crash, {"tuned": "trl-sft-lora-tuned"})]
    runs, failures, not_run, stopped_by = run.run_rounds(rows, 2, tmp_path, threads=1, timeout=300)
    assert len(runs[run.MATMUL_LIMIT]) == 2 and not failures[run.MATMUL_LIMIT] and not_run == [] and stopped_by is None
    assert [f["why"] for f in failures["trl-sft-lora"]] == ["it wrote no probe record"] * 2
    assert [f["why"] for f in failures["trl-sft-lora-tuned"]] == [
        "trained 1 optimizer step(s); tokens/s is timed after step 1, so it needs at least 2"] * 2
    assert runs["sft-lora"] == [] and [f["why"] for f in failures["sft-lora"]] == ["exit code 3"] * 2
    assert all("out of memory" in f["log_tail"] and f["log"] == str(tmp_path / "sft-lora.log")
               for f in failures["sft-lora"])
    done = run.best_of_runs(rows, runs, None, failures)
    assert done[run.MATMUL_LIMIT]["kind"] == run.MATMUL_LIMIT and done[run.MATMUL_LIMIT]["failed_runs"] == []
    failed = done["sft-lora"]
    assert failed["kind"] == "failed" and failed["error"] == f"exit code 3; log: {tmp_path / 'sft-lora.log'}"
    goals = run.goals("cpu", done)
    assert goals[:2] == [f"sft-lora FAILED ({failed['error']}): goal not judged"] * 2
    result = {"suite": "cpu", "date": "d", "model": "m", "seq_length": 96, "steps": 3, "load_before": [1, 1, 1],
              "load_after": [1, 1, 1], "wall_s": 60, "command": "python -m bench.run", "goals": goals,
              "rows": list(done.values()), "not_run": not_run,
              "environment": {"host": "h", "cpu": "c", "threads": 1, "cuda_device": None,
                              "versions": {"torch": "t", "transformers": "x", "trl": "y", "peft": "z"}}}
    table = run.markdown(result)
    assert f"| sft-lora | `sft` | yes | 96 | 1 | FAILED | – | – | – | – | – | – | {failed['error']} |" in table
    assert "- FAILED runs: trl-sft-lora, trl-sft-lora-tuned, sft-lora;" in table and "| matmul-limit |" in table


@pytest.mark.slow
def test_rows_that_time_out_are_stopped_and_written_as_failed_with_their_logs_kept(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU the suite adds a full-size QLoRA row")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the work dir, kept
    out = tmp_path / "results"
    code = run.main(["--suite", "gpu", "--shape", "tiny", "--only", "sft-lora", "--steps", "2", "--peak-tflops", "1",
                     "--timeout", "1", "--out", str(out)])  # no row imports its libraries in a second
    assert code == 1
    (result_file,) = out.glob("*-gpu.json")
    result = json.loads(result_file.read_text())
    assert [(row["name"], row["kind"]) for row in result["rows"]] == [
        ("trl-sft-lora", "failed"), ("trl-sft-lora-tuned", "failed"), ("sft-lora", "failed")]
    logs = [Path(row["failed_runs"][0]["log"]) for row in result["rows"]]
    assert all(row["error"].startswith("timed out after 1 s; log: ") for row in result["rows"])
    assert all(log.is_file() for log in logs)  # the work dir is kept for them
    workdir = logs[0].parent
    assert f"[bench] work dir kept: {workdir}" in capsys.readouterr().out
    assert processes_mentioning(str(workdir)) == []  # each timed-out row's processes were stopped
    table = result_file.with_suffix(".md").read_text()
    assert "| sft-lora | `sft` | yes | 2048 | 1 | FAILED | – |" in table


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_running_row_and_writes_the_rows_already_measured(tmp_path, tiny_model, signum):
    """SIGINT to the runner's process group, as a terminal's Ctrl-C sends it, or SIGTERM, as a CI job's cancel
    or `timeout` does: the running row (in a session of its own, so it does not get that signal) is stopped by
    the runner, and the limit row measured before it is written."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--model", tiny_model, "--only", "sft-lora",
                             "--steps", "100000", "--out", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = ""
        while "[bench] trl-sft-lora: " not in seen:
            line = proc.stdout.readline()
            assert line, seen
            seen += line
        output_dir = seen.split("--output_dir ", 1)[1].split()[0]
        while not processes_mentioning(output_dir):  # the row's process runs: interrupt it mid-row
            assert proc.poll() is None, seen
            time.sleep(0.01)
        os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, seen + out
    assert "Traceback" not in out and f"interrupted by {signum.name}: the running row was stopped" in out
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert [row["name"] for row in result["rows"]] == [run.MATMUL_LIMIT]
    assert result["not_run"] == ["trl-sft-lora", "trl-sft-lora-tuned", "sft-lora"]
    table = result_file.with_suffix(".md").read_text()
    assert "- INTERRUPTED: trl-sft-lora, trl-sft-lora-tuned, sft-lora did not run" in table
    assert processes_mentioning(output_dir) == []
    assert not Path(output_dir).parent.exists()  # nothing failed: the work dir is removed as usual


def test_the_scaling_plot_draws_one_line_per_tool_and_process_count(tmp_path):
    rows = [{"kind": "training", "tool": tool, "processes": processes, "seq_length": length,
             "tokens_per_s": 100.0 * processes, "peak_memory_bytes": 2**30 * length / 256}
            for tool in ("sft", "trl sft") for processes in (1, 2) for length in run.SCALING_LENGTHS]
    result = {"rows": rows, "model": "m", "date": "d", "environment": {"cpu": "c", "logical_cpus": 2}}
    run.plot_scaling(result, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def gpu_suite_on_cpu(out: Path, only: str, steps: int) -> tuple[Path, dict]:
    """``python -m bench.run --suite gpu`` of the ``only`` rows with the tiny random model, on this CPU; the result
    file and what it holds."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU this would run the full-size suite: use make bench there")
    code = run.main(["--suite", "gpu", "--shape", "tiny", "--only", only, "--steps", str(steps), "--seq-length", "256",
                     "--peak-tflops", "1", "--timeout", "300", "--out", str(out)])
    assert code == 0
    (result_file,) = out.glob("*-gpu.json")
    return result_file, json.loads(result_file.read_text())


@pytest.mark.slow
def test_gpu_path_runs_on_cpu_with_a_tiny_model_and_writes_real_numbers(tmp_path):
    """The GPU suite's path end to end (random model from a config, peer + recipe, MFU), on a CPU."""
    result_file, result = gpu_suite_on_cpu(tmp_path, "sft-lora", steps=2)
    assert result["suite"] == "gpu" and result["seq_length"] == 256 and result["steps"] == 2
    assert len(result["load_before"]) == 3 and result["environment"]["versions"]["trl"]
    assert "no GPU in this run" in result["goals"][0]
    peer, tuned, ours = result["rows"]
    assert (peer["name"], tuned["name"], ours["name"]) == ("trl-sft-lora", "trl-sft-lora-tuned", "sft-lora")
    for row in (peer, tuned, ours):
        assert row["steps"] == 2 and row["device"] == "cpu" and row["model"]["head_dim"] == 16
        assert row["tokens_timed"] > 0 and math.isclose(row["tokens_per_s"] * row["timed_s"], row["tokens_timed"])
        assert 0 < row["time_to_first_step_s"] < row["process_wall_s"]
        assert row["peak_memory_kind"] == "rss" and row["peak_memory_bytes"] > 100 * 2**20
        assert 0 < row["mfu"] < 1 and row["flops_per_token"] > 6 * flops.dense_params(row["model"]) * 0.66
        assert row["foreign_cpu_share"] is not None
    # Each side really ran with its own settings: TRL defaults vs the recipe's packed batches.
    assert peer["settings"]["gradient_checkpointing"] is True and peer["settings"]["packing"] is False
    assert tuned["settings"]["gradient_checkpointing"] is False and tuned["settings"]["packing"] is True
    assert tuned["settings"]["padding_free"] is True and tuned["settings"]["per_device_train_batch_size"] == 4
    assert ours["settings"]["packing"] is True and ours["settings"]["per_device_train_batch_size"] == 4
    assert peer["tokens_per_step"] <= 8 * 256 and ours["tokens_per_step"] <= 4 * 256
    assert tuned["tokens_per_step"] <= 4 * 256
    assert 0 < peer["loss_tokens_per_s"] <= peer["tokens_per_s"]
    assert ours["ratios"] == {"defaults": pytest.approx(ours["tokens_per_s"] / peer["tokens_per_s"]),
                              "tuned": pytest.approx(ours["tokens_per_s"] / tuned["tokens_per_s"])}
    table = Path(result_file.with_suffix(".md")).read_text()
    assert "| sft-lora | `sft` | yes | 256 | 1 |" in table and "Command: `python -m bench.run --suite gpu" in table


@pytest.mark.slow
def test_gpu_suites_fsdp_and_zero2_rows_run_on_cpu_and_probe_fsdps_own_loop(tmp_path):
    """sft-fsdp trains in a loop of its own, without a Trainer: its row is timed through the loop's observer."""
    result_file, result = gpu_suite_on_cpu(tmp_path, "sft-zero2", steps=3)
    fsdp, zero2 = result["rows"]
    assert (fsdp["name"], zero2["name"]) == ("sft-fsdp", "sft-zero2")
    for row in (fsdp, zero2):
        assert row["steps"] == 3 and row["device"].startswith("cpu") and row["model"]["params_trainable"] > 3_000_000
        assert row["model"]["params_tied_lm_head"] == row["model"]["params_embedding"]  # tied, sharded or not
        assert row["tokens_timed"] > 0 and row["tokens_per_step"] <= 4 * 256 and row["peak_memory_bytes"] > 0
        assert row["settings"]["per_device_train_batch_size"] == 4 and row["settings"]["bf16"] is True
    assert 0 < fsdp["loss_tokens_per_s"] < fsdp["tokens_per_s"]  # counted from the loop's items
    assert zero2["ratios"] == {"fsdp": pytest.approx(zero2["tokens_per_s"] / fsdp["tokens_per_s"])}
    table = Path(result_file.with_suffix(".md")).read_text()
    assert "| vs fsdp |" in table and "| sft-fsdp | `sft-fsdp` | no | 256 | 1 |" in table
