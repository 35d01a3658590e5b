"""The dpo recipe, run for real through ``launcher run`` on the tiny model (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import (frozen_weight_copies_kept, heap_kept_for_reuse, logged_losses, lora_layers_fused,
                            read_metrics, run_launcher)

pytestmark = pytest.mark.slow(minutes=1)  # trains real models; make test starts the longest first

# The user-data path: local JSONL files whose columns are not named prompt/chosen/rejected.
FIELDS = {"prompt_field": "question", "chosen_field": "good", "rejected_field": "bad"}


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> dict[str, str]:
    """The hotel preference pairs of 8 facts (72 train, 16 eval), columns renamed to question/good/bad."""
    from recipekit.data import EMBEDDED_DIR

    def read(split):
        return [json.loads(line) for line in (EMBEDDED_DIR / f"preferences_{split}.jsonl").read_text().splitlines()]

    evals = read("eval")[:16]
    facts = {row["fact_id"] for row in evals}
    out = tmp_path_factory.mktemp("pairs")
    paths = {}
    for split, rows in (("train", [r for r in read("train") if r["fact_id"] in facts]), ("eval", evals)):
        renamed = [{"id": r["id"], "question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in rows]
        paths[split] = str(out / f"{split}.jsonl")
        Path(paths[split]).write_text("".join(json.dumps(r) + "\n" for r in renamed))
    return paths


def dpo(output_dir: Path, tiny_model: str, pairs: dict, *extra: str, nproc: int = 1):
    """Run the recipe on the tiny model and the small pairs; fail with its output."""
    overrides = [f"model_name={tiny_model}", f"dataset_name={pairs['train']}", f"eval_dataset_name={pairs['eval']}",
                 *(f"{key}={column}" for key, column in FIELDS.items()), f"output_dir={output_dir}",
                 "max_steps=8", "learning_rate=5e-3", "batch_size=4", "beta=0.1", "logging_steps=1",
                 "save_steps=4", "bf16=false", *extra]
    args = ["run", "recipes/dpo", "--nproc", str(nproc)]
    for item in overrides:
        args += ["--set", item]
    result = run_launcher(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, small_pairs):
    """One LoRA run of 8 steps with checkpoints at steps 4 and 8, shared by the tests below."""
    out = tmp_path_factory.mktemp("dpo") / "lora"
    result = dpo(out, tiny_model, small_pairs)
    return out, result, read_metrics(out)


def test_bf16_on_cpu_keeps_the_frozen_weights_cast_while_training(tmp_path, tiny_model, small_pairs):
    result = dpo(tmp_path / "bf16", tiny_model, small_pairs, "bf16=true", "max_steps=2", "save_steps=2")
    kept = frozen_weight_copies_kept(result)
    assert kept and kept[0] > 0  # the base model's projections under the adapters
    assert lora_layers_fused(result) == []  # PEFT's own LoRA forward: the fused one did not pay for dpo
    assert heap_kept_for_reuse(result) == 1
    assert read_metrics(tmp_path / "bf16")["global_step"] == 2


def completion_logp_margins(model, tokenizer, rows) -> list[float]:
    """log p(good | question) - log p(bad | question) per row, summed over the reply tokens, with plain transformers."""
    import torch

    def logp(messages, reply):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + reply, tokenize=False)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        return logprobs[torch.arange(len(targets)), targets][start - 1:].sum().item()

    return [logp(r["question"], r["good"]) - logp(r["question"], r["bad"]) for r in rows]


def test_lora_raises_held_out_preference_and_the_adapter_loads(lora_run, small_pairs):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result, metrics = lora_run
    assert metrics["global_step"] == 8 and metrics["world_size"] == 1 and metrics["resumed_from"] is None
    assert metrics["train_pairs"] == 72 and metrics["eval_pairs"] == 16
    assert len(logged_losses(metrics)) == 8
    # Measured, not assumed: a fresh adapter leaves the policy equal to the reference, so every pair ties.
    assert metrics["preference_accuracy_before"] == 0.0 and metrics["reward_margin_before"] == 0.0
    assert metrics["preference_accuracy_after"] >= 0.75 and metrics["reward_margin_after"] > 0.05
    # The policy's own log-likelihood preference for the chosen replies rose on held-out pairs.
    assert metrics["logp_margin_after"] > metrics["logp_margin_before"] + 0.5
    assert metrics["likelihood_accuracy_after"] >= metrics["likelihood_accuracy_before"]
    assert "held-out preference accuracy" in result.stdout and "held-out reward margin" in result.stdout
    card = (out / "model" / "README.md").read_text()
    assert f"| held-out preference accuracy | 0.0% | {100 * metrics['preference_accuracy_after']:.1f}% |" in card
    assert "library_name: peft" in card and "recipe of ft-recipes" in card
    assert (out / "loss.png").stat().st_size > 0 and list((out / "runs").rglob("events.out.tfevents*"))
    resolved = (out / "resolved_config.yaml").read_text()
    assert "chosen_field: good" in resolved and "loss_type: sigmoid" in resolved

    # The saved adapter, loaded with plain peft code, prefers the chosen replies more than its base does,
    # and the recipe's numbers agree with this independent computation.
    eval_rows = [json.loads(line) for line in Path(small_pairs["eval"]).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    adapter = AutoPeftModelForCausalLM.from_pretrained(out / "model").eval()
    assert adapter.peft_config["default"].r == 16
    trained = completion_logp_margins(adapter, tokenizer, eval_rows)
    with adapter.disable_adapter():
        base = completion_logp_margins(adapter, tokenizer, eval_rows)
    assert abs(sum(trained) / 16 - metrics["logp_margin_after"]) < 0.05
    assert abs(sum(base) / 16 - metrics["logp_margin_before"]) < 0.05
    rewards = [0.1 * (t - b) for t, b in zip(trained, base)]
    assert abs(sum(rewards) / 16 - metrics["reward_margin_after"]) < 0.01
    assert sum(r > 0 for r in rewards) / 16 == pytest.approx(metrics["preference_accuracy_after"], abs=1 / 16)
    assert AutoModelForCausalLM.from_pretrained(out / "merged").config.num_hidden_layers == 2


def test_implicit_prompt_pairs_train_by_config_alone(tmp_path, tiny_model, small_pairs):
    """chosen and rejected as whole conversations (the prompt is what they share); the file also has a prompt
    column, which auto detection would take for an explicit one, so dataset_format says which it is."""
    paths = {}
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in Path(small_pairs[split]).read_text().splitlines()]
        paths[split] = str(tmp_path / f"{split}.jsonl")
        Path(paths[split]).write_text("".join(json.dumps({"question": "unused", "good": r["question"] + r["good"],
                                                          "bad": r["question"] + r["bad"]}) + "\n" for r in rows))
    out = tmp_path / "implicit"
    dpo(out, tiny_model, paths, "dataset_format=implicit", "max_steps=4", "merge_adapter=false", "save_steps=10")
    metrics = read_metrics(out)
    assert metrics["train_pairs"] == 72 and metrics["eval_pairs"] == 16
    assert metrics["preference_accuracy_before"] == 0.0 and metrics["reward_margin_after"] > 0.0


def test_rerun_resumes_from_the_newest_complete_checkpoint(lora_run, tmp_path, tiny_model, small_pairs):
    out = tmp_path / "resume"
    shutil.copytree(lora_run[0], out)
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and (out / "checkpoint-8" / "COMPLETE").is_file()
    # Also the precomputed-reference path: every pair is scored by the reference once, up front.
    result = dpo(out, tiny_model, small_pairs, "max_steps=10", "save_steps=2", "merge_adapter=false",
                 "precompute_ref_log_probs=true", "heap_reuse=false")
    assert heap_kept_for_reuse(result) == 0  # heap_reuse: false leaves glibc's malloc as it is
    metrics = read_metrics(out)
    assert metrics["resumed_from"] == str(out / "checkpoint-8")
    assert metrics["global_step"] == 10 and (out / "checkpoint-10" / "COMPLETE").is_file()
    steps = [row["step"] for row in metrics["log_history"] if "loss" in row]
    assert steps == list(range(1, 11))  # steps 1-8 come from the checkpoint's history, 9-10 are new
    # The measurement before training comes back from the checkpoint; the one after is new.
    assert metrics["preference_accuracy_before"] == 0.0 and metrics["reward_margin_before"] == 0.0
    assert metrics["reward_margin_after"] > lora_run[2]["reward_margin_after"] * 0.5 > 0


def test_full_fine_tuning_with_a_reference_copy_on_two_ranks(tmp_path, tiny_model, small_pairs):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    # 2 ranks x 2 pairs: the global batch of 4 the LoRA run takes in one process.
    dpo(out, tiny_model, small_pairs, "use_peft=false", "max_steps=4", "learning_rate=1e-3", "batch_size=2",
        "replica_check_steps=1", nproc=2)
    metrics = read_metrics(out)
    assert metrics["world_size"] == 2 and metrics["replicas_checked_at_steps"] == [1, 2, 3, 4]
    assert metrics["preference_accuracy_before"] == 0.0 and metrics["reward_margin_before"] == 0.0
    assert metrics["reward_margin_after"] > 0.05 and metrics["preference_accuracy_after"] >= 0.75
    assert not (out / "merged").exists()
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.num_hidden_layers == 2


def test_bad_pairs_and_config_are_refused_before_training(tmp_path, tiny_model):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "Is there parking?"}],
                                "rejected": [{"role": "assistant", "content": "No."}]}) + "\n")
    out = tmp_path / "refused"
    result = run_launcher("run", "recipes/dpo", "--set", f"model_name={tiny_model}", "--set", f"dataset_name={data}",
                          "--set", f"output_dir={out}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: dataset_name: {str(data)!r} matches no preference format; columns found: prompt, rejected. " \
           "Each format needs: explicit: prompt, chosen, rejected; implicit: chosen, rejected" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()  # stopped before any model or output

    result = run_launcher("run", "recipes/dpo", "--set", "rejected_field=chosen",
                          "--set", "peft_target_modules=[q_proj,lm_head]", "--set", f"output_dir={out}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 2, result.stderr[-2000:]
    assert any(line.startswith("error: peft_target_modules: lm_head cannot get an adapter") for line in errors)
    assert any(line.startswith("error: rejected_field: must name a different column than chosen_field")
               for line in errors)
    assert not out.exists()
