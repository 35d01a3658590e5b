"""The sft recipe, run for real through ``launcher run`` on the tiny model (CPU unless marked gpu)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import (TINY_SEQ_LENGTH, frozen_weight_copies_kept, heap_kept_for_reuse, logged_losses,
                            lora_layers_fused, read_metrics, run_launcher)


pytestmark = pytest.mark.slow(minutes=2)  # trains real models; make test starts the longest first


CANARY = "hf_CANARY_7f3a9c1e5b"  # a Hub token's value, which must never be written anywhere


def sft_args(output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str, nproc: int = 1,
             recipe: str = "sft") -> list[str]:
    """``launcher run`` of an SFT-style recipe on the tiny model and a slice of the hotel data (``extra`` wins)."""
    overrides = [f"model_name={tiny_model}", f"dataset_name={small_hotel['train']}",
                 f"eval_dataset_name={small_hotel['eval']}", f"output_dir={output_dir}", "max_steps=8",
                 "learning_rate=3e-3", "batch_size=2", f"seq_length={TINY_SEQ_LENGTH}", "logging_steps=1",
                 "save_steps=4", "bf16=false", "eval_max_new_tokens=8", *extra]
    return ["run", f"recipes/{recipe}", "--nproc", str(nproc), *(a for o in overrides for a in ("--set", o))]


def sft(output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str, nproc: int = 1, recipe: str = "sft",
        env: dict[str, str] | None = None):
    """Run an SFT-style recipe (see sft_args); fail with its output."""
    result = run_launcher(*sft_args(output_dir, tiny_model, small_hotel, *extra, nproc=nproc, recipe=recipe), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, small_hotel):
    """One LoRA run of 8 steps (checkpoints at 4 and 8) with a Hub token given by reference, shared below."""
    out = tmp_path_factory.mktemp("sft") / "lora"
    result = sft(out, tiny_model, small_hotel, "use_auth_token=HF_TOKEN", env={"HF_TOKEN": CANARY})
    return out, result, read_metrics(out)


def test_lora_trains_and_every_output_loads(lora_run, small_hotel):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out, result, metrics = lora_run
    losses = logged_losses(metrics)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert 0.0 <= metrics["hit_rate_after"] <= 1.0 and metrics["global_step"] == 8
    assert (metrics["dataset_format"], metrics["train_examples"], metrics["eval_examples"]) == ("messages", 48, 8)
    assert (out / "loss.png").stat().st_size > 0 and list((out / "runs").rglob("events.out.tfevents*"))
    assert "held-out answer hit rate" in result.stdout
    # The suggested question is the first held-out one of the user's own data.
    first = json.loads(Path(small_hotel["eval"]).read_text().splitlines()[0])["messages"][0]["content"]
    assert f"chat with it: launcher try {out} --prompt '{first}'" in result.stdout
    # One progress line per logging step, in place of the Trainer's dicts.
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == [f"{step}/8" for step in range(1, 9)]
    assert all(" tokens/s  elapsed " in line and "  ETA " in line and "  loss " in line for line in progress)
    assert "{'loss'" not in result.stdout

    # Model cards: the base model, the data, the measured numbers, how to load it and try it.
    cards = {name: (out / name / "README.md").read_text() for name in ("model", "merged")}
    before, after = metrics["hit_rate_before"], metrics["hit_rate_after"]
    for name, card in cards.items():
        assert f"| held-out answer hit rate | {100 * before:.1f}% | {100 * after:.1f}% |" in card
        assert f"| held-out eval loss | {metrics['eval_loss_before']:.4f} | {metrics['eval_loss_after']:.4f} |" in card
        assert f"- train: `{small_hotel['train']}`" in card and "random 2-layer Llama" in card
        assert f"launcher try {out} --prompt '{first}'" in card and "model_name: tiny-random-llama" in card
    assert "library_name: peft" in cards["model"] and f"AutoPeftModelForCausalLM.from_pretrained('{out}/model')" in \
        cards["model"]
    assert f"AutoModelForCausalLM.from_pretrained('{out}/merged')" in cards["merged"]
    assert (out / "README.md").read_text() == cards["merged"]

    adapter = AutoPeftModelForCausalLM.from_pretrained(out / "model")  # plain peft code
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # plain transformers code
    assert adapter.peft_config["default"].r == 16 and merged.config.num_hidden_layers == 2
    chat = pipeline("text-generation", model=merged, tokenizer=AutoTokenizer.from_pretrained(out / "merged"))
    reply = chat([{"role": "user", "content": "When is check-out?"}], max_new_tokens=4, do_sample=False)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"

    tried = run_launcher("try", str(out), "--prompt", "Is there parking?", "--max-new-tokens", "4")
    assert tried.returncode == 0 and tried.stdout.startswith("> Is there parking?\n"), tried.stderr[-2000:]

    resolved = (out / "resolved_config.yaml").read_text()
    assert f"output_dir: {out}" in resolved and "learning_rate: 0.003" in resolved


def test_full_fine_tuning(tmp_path, tiny_model, small_hotel):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    sft(out, tiny_model, small_hotel, "use_peft=false", "eval_answer_field=null")
    losses = logged_losses(read_metrics(out))
    assert losses[-1] < losses[0]
    assert not (out / "merged").exists()
    AutoModelForCausalLM.from_pretrained(out / "model")


def test_rerun_resumes_from_the_newest_complete_checkpoint(lora_run, tmp_path, tiny_model, small_hotel):
    out = tmp_path / "resume"
    shutil.copytree(lora_run[0], out)
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and (out / "checkpoint-8" / "COMPLETE").is_file()
    result = sft(out, tiny_model, small_hotel, "max_steps=10", "save_steps=2", "eval_answer_field=null",
                 "heap_reuse=false")
    assert heap_kept_for_reuse(result) == 0  # heap_reuse: false leaves glibc's malloc as it is
    metrics = read_metrics(out)
    assert metrics["resumed_from"] == str(out / "checkpoint-8")
    assert metrics["global_step"] == 10 and (out / "checkpoint-10" / "COMPLETE").is_file()
    steps = [row["step"] for row in metrics["log_history"] if "loss" in row]
    assert steps == list(range(1, 11))  # steps 1-8 come from the checkpoint's history, 9-10 are new
    assert logged_losses(metrics)[:8] == logged_losses(lora_run[2])


def test_a_finished_run_started_again_trains_no_step_past_its_last(lora_run, tmp_path, tiny_model, small_hotel):
    """A requeued job that had finished resumes at its last step. Its 8 steps end inside the second epoch (7 steps
    an epoch), where the Trainer would run a ninth step before checking max_steps; nothing is trained, and the
    outputs are the finished run's."""
    finished_dir, _, finished = lora_run
    out = tmp_path / "finished"
    shutil.copytree(finished_dir, out)
    result = sft(out, tiny_model, small_hotel)
    metrics = read_metrics(out)
    assert metrics["resumed_from"] == str(out / "checkpoint-8") and metrics["global_step"] == 8
    assert "nothing left to train: resumed at step 8 of 8" in result.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert logged_losses(metrics) == logged_losses(finished)
    assert metrics["eval_loss_after"] == pytest.approx(finished["eval_loss_after"], rel=1e-6)
    assert metrics["train_loss"] is None  # none trained in this run, rather than 0
    assert "train_loss" not in (out / "model" / "README.md").read_text()


def test_a_rerun_on_changed_data_stops_instead_of_resuming_and_keeps_the_checkpoints(lora_run, tmp_path, tiny_model,
                                                                                     small_hotel):
    out = tmp_path / "changed"
    shutil.copytree(lora_run[0], out)
    fewer = tmp_path / "train.jsonl"
    fewer.write_text("".join(Path(small_hotel["train"]).read_text().splitlines(keepends=True)[:-1]))
    before = sorted(p.name for p in out.iterdir())
    refused = run_launcher(*sft_args(out, tiny_model, small_hotel, f"dataset_name={fewer}", "max_steps=10"))
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: resume: {out / 'checkpoint-8'} was written while training on other data (the "
                      "training rows have changed since); give this run a new output_dir, or move that "
                      "directory's checkpoints away to start over in it"], refused.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == before


def test_two_ranks_stay_identical_and_end_where_one_process_does_with_the_same_global_batch(
        tmp_path, tiny_model, small_hotel):
    """2 ranks x 1 row per step against 1 process x 2 accumulated micro-batches of 1 row: the same rows in
    the same order, the same token-mean loss over the step, so the same updates. Only the gradient sums are
    taken in another order (all-reduce against accumulation), a difference of the order of float32
    rounding in each step (here none at all); after 8 AdamW steps at lr 3e-3 the weights must agree to 1e-6.
    Replicas that each trained on their own half of the rows ended 2e-2 apart, so the tolerance cannot hide
    that."""
    from safetensors.torch import load_file

    common = ("max_steps=8", "eval_answer_field=null", "batch_size=1")
    two, one = tmp_path / "two-ranks", tmp_path / "one-process"
    result = sft(two, tiny_model, small_hotel, *common, "replica_check_steps=1", nproc=2)
    sft(one, tiny_model, small_hotel, *common, "gradient_accumulation_steps=2")
    two_ranks, one_process = read_metrics(two), read_metrics(one)
    # Evaluated before step 1, and both ranks held the very same weights after every step.
    assert two_ranks["world_size"] == 2 and two_ranks["eval_loss_before"] is not None
    assert two_ranks["replicas_checked_at_steps"] == list(range(1, 9))
    # Each progress line once for the job (rank 0); the other rank logs only warnings, naming itself
    # (tests/recipekit/test_process.py shows the prefix on a warning of its own).
    steps = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("step ")]
    assert steps == [f"{step}/8" for step in range(1, 9)]
    assert "step " not in result.stderr and result.stdout.count("trained 8 steps in ") == 1
    ranked = [line[9:] for line in result.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d rank ", line)]
    assert all(line.startswith(("rank 1 WARNING ", "rank 1 ERROR ")) for line in ranked), ranked
    assert logged_losses(two_ranks) == pytest.approx(logged_losses(one_process), rel=1e-6)

    adapters = [load_file(run / "model" / "adapter_model.safetensors") for run in (two, one)]
    assert adapters[0].keys() == adapters[1].keys()
    trained = max(float(adapters[1][name].abs().max()) for name in adapters[1] if "lora_B" in name)
    assert trained > 1e-3  # the adapters did move away from their zero start
    gap = max(float((adapters[0][name] - adapters[1][name]).abs().max()) for name in adapters[0])
    assert gap <= 1e-6, f"2-rank and 1-process weights differ by up to {gap}"


SPEAKER = {"system": "system", "user": "human", "assistant": "gpt"}
# The hotel conversations rewritten in each other format: (file suffix, row maker, extra keys).
FORMATS = {
    "sharegpt": (".jsonl", lambda m: {"conversations": [{"from": SPEAKER[t["role"]], "value": t["content"]}
                                                        for t in m]}, ()),
    # CSV with other column names: mapped by dataset_columns.
    "alpaca": (".csv", lambda m: {"question": m[-2]["content"], "context": "", "reply": m[-1]["content"]},
               ("dataset_columns={instruction: question, input: context, output: reply}",)),
    "prompt_completion": (".jsonl", lambda m: {"prompt": f"Question: {m[-2]['content']}\nAnswer:",
                                               "completion": " " + m[-1]["content"]}, ()),
    # Alpaca columns too, which auto detection would pick: dataset_format insists on the text.
    "text": (".parquet", lambda m: {"text": f"{m[-2]['content']} {m[-1]['content']}",
                                    "instruction": m[-2]["content"], "output": "-"}, ("dataset_format=text",)),
}


def write_rows(path: Path, rows: list[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(rows)
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True), ".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path)}[path.suffix]()
    return str(path)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_data_format_trains_by_config_alone(fmt, tmp_path, tiny_model, small_hotel):
    """The first 24 hotel conversations as a file in another format: recognised (or named), converted, trained."""
    suffix, make_row, keys = FORMATS[fmt]
    conversations = [json.loads(line)["messages"] for line in Path(small_hotel["train"]).read_text().splitlines()]
    data = write_rows(tmp_path / f"train{suffix}", [make_row(m) for m in conversations[:24]])
    out = tmp_path / "out"
    result = sft(out, tiny_model, {"train": data, "eval": data}, "max_steps=3", "merge_adapter=false",
                 "save_steps=10", *keys)
    metrics = read_metrics(out)
    kind = {"prompt_completion": "completion", "text": "text"}.get(fmt, "chat")
    assert (metrics["dataset_format"], metrics["data_kind"], metrics["train_examples"]) == (fmt, kind, 24)
    assert len(logged_losses(metrics)) == 3 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert ("chat with it: launcher try" in result.stdout) and (("--prompt" in result.stdout) == (kind != "text"))


def test_string_completions_score_held_out_answers_by_token_f1(tmp_path, tiny_model, small_hotel):
    """Prompt/completion strings with an eval split: the reference is the completion itself."""
    rows = [json.loads(line) for line in Path(small_hotel["eval"]).read_text().splitlines()]
    evals = write_rows(tmp_path / "eval.jsonl", [FORMATS["prompt_completion"][1](r["messages"]) for r in rows])
    out = tmp_path / "out"
    sft(out, tiny_model, {"train": evals, "eval": evals}, "max_steps=2", "merge_adapter=false", "save_steps=10",
        "eval_answer_field=completion", "eval_answer_metric=token_f1")
    metrics = read_metrics(out)
    assert metrics["data_kind"] == "completion" and metrics["eval_examples"] == 8
    assert metrics["hit_rate_before"] is not None and metrics["hit_rate_after"] is not None


def test_a_base_model_without_a_chat_template_trains_chat_data_with_the_configured_one(tmp_path, tiny_model,
                                                                                       small_hotel):
    from transformers import AutoTokenizer

    from tests.recipekit.test_loading import base_model_dir

    base = base_model_dir(tiny_model, tmp_path)
    out = tmp_path / "out"
    sft(out, tiny_model, small_hotel, f"model_name={base}", "default_chat_template=chatml", "max_steps=2",
        "save_steps=10", "eval_answer_field=null")
    for saved in ("model", "merged"):  # saved with the model: it chats the way it was trained
        assert AutoTokenizer.from_pretrained(out / saved).chat_template.startswith("{%- for message in messages %}"
                                                                                   "{{ '<|im_start|>'")
    refused = run_launcher(*sft_args(tmp_path / "refused", tiny_model, small_hotel, f"model_name={base}",
                                     "default_chat_template=null"))
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"error: default_chat_template: the tokenizer of {base!r} has no chat template, which chat data needs; set "
        "default_chat_template to plain or chatml, or bring prompt/completion strings"]


def test_a_file_of_no_known_format_is_one_error_before_anything_loads(tmp_path):
    data = write_rows(tmp_path / "rows.csv", [{"question": "q", "reply": "r"}])
    out = tmp_path / "out"
    result = run_launcher("run", "recipes/sft", "--set", f"dataset_name={data}", "--set", f"output_dir={out}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: dataset_name: {data!r} matches no known format; columns found: question, reply. "
                           "Each format needs: messages: messages; sharegpt: conversations; alpaca: instruction, "
                           "output (+ input, system); prompt_completion: prompt, completion; text: text")
    assert not out.exists()


def test_bf16_on_cpu_keeps_the_frozen_weights_cast_and_fuses_lora_while_training(tmp_path, tiny_model, small_hotel):
    result = sft(tmp_path / "bf16", tiny_model, small_hotel, "bf16=true", "max_steps=2", "save_steps=2",
                 "merge_adapter=false")
    kept, = frozen_weight_copies_kept(result)
    fused, = lora_layers_fused(result)
    assert kept > 0 and fused[0] == fused[1] > 0  # the base projections cast once; every LoRA layer fused
    assert heap_kept_for_reuse(result) == 1
    assert read_metrics(tmp_path / "bf16")["global_step"] == 2


@pytest.mark.gpu
def test_lora_on_gpu_in_bf16(tmp_path, tiny_model, small_hotel):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: run `make test-gpu` on a GPU machine")
    out = tmp_path / "gpu"
    sft(out, tiny_model, small_hotel, "bf16=true")
    metrics = read_metrics(out)
    assert metrics["device"].startswith("cuda") and logged_losses(metrics)[-1] < logged_losses(metrics)[0]


def test_token_never_reaches_rendered_jobs_outputs_or_logs(lora_run, monkeypatch):
    out, result, _ = lora_run  # trained with HF_TOKEN set to CANARY: adapter, merged model, checkpoints, logs
    assert CANARY not in result.stdout + result.stderr
    leaked = [p for p in out.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaked == []
    assert "use_auth_token: HF_TOKEN" in (out / "resolved_config.yaml").read_text()  # the reference, not the value

    monkeypatch.setenv("HF_TOKEN", CANARY)
    refused = run_launcher("run", "recipes/sft", "--set", f"use_auth_token={CANARY}")
    assert refused.returncode == 2 and CANARY not in refused.stdout + refused.stderr

    # Rendered cluster jobs carry the reference (an env var name, a Secret name), never the value.
    for backend in (["--backend", "slurm"], ["--backend", "k8s", "--hf-token-secret", "hf-token"]):
        rendered = run_launcher("render", "recipes/sft", *backend, "--nodes", "2", "--set", "use_auth_token=HF_TOKEN")
        assert rendered.returncode == 0, rendered.stderr
        assert CANARY not in rendered.stdout + rendered.stderr and "HF_TOKEN" in rendered.stdout


def test_the_makerspace_data_is_what_its_generator_writes(tmp_path):
    """The other-domain data of the README's measurement: Alpaca rows, 16 facts x 3 training questions, and
    2 named plus 2 indirect held-out questions per fact, none worded as a training question."""
    import runpy

    from recipekit import formats

    data = Path(__file__).resolve().parents[2] / "recipes" / "sft" / "data"
    runpy.run_path(str(data / "generate_makerspace.py"), run_name="generate")["main"](["--out", str(tmp_path)])
    data = data / "makerspace"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in data.iterdir())
    assert all((tmp_path / p.name).read_bytes() == p.read_bytes() for p in data.iterdir())
    rows = {p.name: json.loads(p.read_text()) for p in data.iterdir()}
    assert [len(rows[name]) for name in ("train.json", "eval.json", "eval_indirect.json")] == [48, 32, 32]
    asked = {row["instruction"].lower() for row in rows["train.json"]}
    for name in ("eval.json", "eval_indirect.json"):
        assert not asked & {row["instruction"].lower() for row in rows[name]}
        assert all(row["answer_key"] in row["output"] for row in rows[name])
    assert formats.detect(rows["train.json"][0], "auto", {}, rows["train.json"][0], "train.json").format == "alpaca"
