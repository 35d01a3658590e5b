"""recipekit.deepspeed_ops: every context builds DeepSpeed's ops with the same ninja, in its own install's dir."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from recipekit import deepspeed_ops


def test_the_pinned_ninja_wins_over_one_earlier_on_path(monkeypatch, tmp_path):
    # A pod, an srun step and a shell each order PATH their own way; a system ninja of another
    # version hashes commands differently and would make every context rebuild the others' ops.
    other = tmp_path / "bin"
    other.mkdir()
    (other / "ninja").write_text("#!/bin/sh\nexit 0\n")
    (other / "ninja").chmod(0o755)
    scripts = sysconfig.get_path("scripts")
    monkeypatch.setenv("PATH", f"{other}:/usr/bin:{scripts}:/bin")
    deepspeed_ops.use_pinned_ninja()
    assert Path(shutil.which("ninja")) == Path(scripts) / "ninja"
    assert os.environ["PATH"].split(":") == [scripts, str(other), "/usr/bin", "/bin"]


def test_each_install_gets_its_own_build_dir(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    mine = deepspeed_ops.extensions_dir()
    assert mine.name.startswith("py") and "-ds" in mine.name
    monkeypatch.setattr(deepspeed_ops.importlib.util, "find_spec",
                        lambda name: type("Spec", (), {"origin": "/elsewhere/venv/deepspeed/__init__.py"}))
    assert deepspeed_ops.extensions_dir() != mine
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/chosen/by/user")
    assert deepspeed_ops.extensions_dir() == Path("/chosen/by/user")
