"""Shared fixtures: the tiny model, a small slice of the hotel data, and a recipe runner."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Block length of the tiny-model training runs: every hotel example fits one (the longest is 89
# tokens), and the tiny model's 49k-word LM head then costs well under half what it does at 256.
TINY_SEQ_LENGTH = 96

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs several pytest workers side by side; one math thread each keeps the recipes
    # they start from oversubscribing the cores (OpenMP threads that spin-wait slow down several-fold).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    """The processes ``make test`` starts write their temporary files (torchrun's ``torchelastic_*`` log folders,
    wandb's) into one folder of this pytest process, removed when it ends, not into the machine's temp dir. The
    image tests keep the temp dir podman is set up with."""
    import tempfile

    if not config.getoption("--images"):
        config.own_tmpdir = tempfile.mkdtemp(prefix="ft-recipes-tests-")
        os.environ["TMPDIR"] = config.own_tmpdir  # for child processes; this one has read its temp dir already


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "own_tmpdir", None):
        shutil.rmtree(config.own_tmpdir, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--images", action="store_true",
                     help="run only the tests inside the built CPU image (make test-images); without it they are left out")


def pytest_collection_modifyitems(config, items):
    """``--images`` selects the tests that need the built image, and only those (``make test-images``);
    ``make test`` leaves them out. Then the longest modules first (``slow(minutes=N)``), so the
    parallel workers finish together instead of one of them ending on a long module while the others idle."""
    wanted = config.getoption("--images")
    chosen = [item for item in items if (item.get_closest_marker("image") is not None) == wanted]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen

    def minutes(item) -> float:
        mark = item.get_closest_marker("slow")
        return 0 if mark is None else mark.kwargs.get("minutes", 1)

    items.sort(key=lambda item: -minutes(item))


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The alias recipes resolve to a 2-layer random Llama with the embedded tokenizer."""
    from recipekit import models

    models.prepare_tiny()
    return models.TINY_MODEL


@pytest.fixture(scope="session")
def small_hotel(tmp_path_factory) -> dict[str, str]:
    """48 train and 8 eval rows of the hotel chat data, as local JSONL files (the user-data path)."""
    from recipekit.data import EMBEDDED_DIR

    out = tmp_path_factory.mktemp("hotel")
    paths = {}
    for split, count in (("train", 48), ("eval", 8)):
        rows = (EMBEDDED_DIR / f"{split}.jsonl").read_text().splitlines()[:count]
        paths[split] = str(out / f"{split}.jsonl")
        Path(paths[split]).write_text("\n".join(rows) + "\n")
    return paths


def processes_mentioning(text: str) -> list[int]:
    """The pids whose command line contains ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, whatever session each is in (torchrun's workers and the
    processes ``launcher run`` starts have their own)."""
    from launcher.signals import children

    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        todo += children(parent)
    for each in found:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_launcher(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``launcher ARGS`` as a user runs it, output captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], cwd=REPO, env=full_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)  # torchrun's workers too, instead of leaving them running
            stdout, stderr = proc.communicate()
            raise AssertionError(f"launcher {' '.join(args)} timed out after {timeout} s\n"
                                 f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def load_recipe(name: str):
    """A recipe's entry module (recipes/<name>/train.py or search.py), imported by path as the tests' own
    module ``recipe_<name>``: its Config and helpers, without running its main."""
    module_name = "recipe_" + name.replace("-", "_")
    if module_name not in sys.modules:
        path = next(p for p in (REPO / "recipes" / name / e for e in ("train.py", "search.py")) if p.is_file())
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def read_metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


def logged_losses(metrics: dict) -> list[float]:
    return [row["loss"] for row in metrics["log_history"] if "loss" in row]


def frozen_weight_copies_kept(result: subprocess.CompletedProcess) -> list[int]:
    """The Linear layers each training loop of a run kept cast (``cpu_speedups.speed_up_training``'s log)."""
    return [int(n) for n in re.findall(r"frozen weights cast once for all of training: (\d+) Linear layers",
                                       result.stdout + result.stderr)]


def heap_kept_for_reuse(result: subprocess.CompletedProcess | str) -> int:
    """How many training loops of a run (or its output) kept freed memory for reuse (the log line of
    ``cpu_speedups.heap_kept_for_reuse``)."""
    output = result if isinstance(result, str) else result.stdout + result.stderr
    return output.count("freed memory kept by malloc for reuse while training")


def lora_layers_fused(result: subprocess.CompletedProcess) -> list[tuple[int, int]]:
    """(fused, all) LoRA layers of each training loop of a run (``cpu_speedups.speed_up_training``'s log)."""
    return [(int(a), int(b)) for a, b in re.findall(r"LoRA updates fused into the base matmul: (\d+) of (\d+)",
                                                    result.stdout + result.stderr)]
