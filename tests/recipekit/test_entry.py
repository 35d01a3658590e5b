"""recipekit.entry: the command line every recipe shares, run as a real process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import yaml

from tests.conftest import REPO

NOISY_RECIPE = '''
import atexit, gc, logging, os, sys
# Registered before entry.run's own handler, so it runs after it (last in, first out).
atexit.register(lambda: os.write(2, b"frozen at exit: %d\\n" % (gc.get_freeze_count() > 0)))
from dataclasses import dataclass
from recipekit import entry
from recipekit.config import option

# Bound to the real stdout before the check runs, as a library's log handler made at import time is.
early = logging.StreamHandler(sys.stdout)
log = logging.getLogger("noisy")
log.addHandler(early)

@dataclass
class Config:
    learning_rate: float = option(1e-3, help="lr")
    name: str = option("plain", help="a name")

def main(cfg, check_only):
    print("print from the check")
    log.warning("[WARNING] a library logging to stdout")
    os.write(1, b"native code writing to fd 1\\n")
    if cfg.name == "bad":
        from recipekit.errors import UsageError
        raise UsageError(["name: must not be 'bad'"])

entry.run(main, Config, "noisy", __file__)
'''


def run_check(tmp_path, *args: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / "train.py"
    recipe.write_text(textwrap.dedent(NOISY_RECIPE))
    (tmp_path / "config.yaml").write_text("learning_rate: 0.002\n")
    return subprocess.run([sys.executable, str(recipe), "--check", *args], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_a_checks_stdout_is_the_resolved_config_alone_whatever_else_writes_there(tmp_path):
    # The launcher ships a check's stdout to the cluster as the job's config (a ConfigMap, a file).
    result = run_check(tmp_path, "--set", "name=x")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {"learning_rate": 0.002, "name": "x"}
    for noise in ("print from the check", "a library logging to stdout", "native code writing to fd 1"):
        assert noise in result.stderr and noise not in result.stdout


def test_a_refused_check_prints_its_error_and_nothing_on_stdout(tmp_path):
    result = run_check(tmp_path, "--set", "name=bad")
    assert result.returncode == 2 and result.stdout == ""
    assert "error: name: must not be 'bad'" in result.stderr


def test_the_process_skips_the_interpreters_last_garbage_collections(tmp_path):
    for name in ("x", "bad"):  # whether it exits 0 or 2
        assert "frozen at exit: 1" in run_check(tmp_path, "--set", f"name={name}").stderr


def test_prepare_reads_the_data_before_asking_the_hub(monkeypatch):
    from recipekit import entry, hub
    from recipekit.schema import TrainingOptions

    calls = []
    monkeypatch.setattr(hub, "token", lambda cfg: calls.append("token") or "tok")
    monkeypatch.setattr(hub, "check_reachable", lambda cfg, token: calls.append(f"hub {token}"))
    token, data = entry.prepare(TrainingOptions(), lambda cfg, token: calls.append(f"data {token}") or [1, 2])
    assert (token, data) == ("tok", [1, 2]) and calls == ["token", "data tok", "hub tok"]
