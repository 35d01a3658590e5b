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


def zero2(optimizer: dict | None, offload: str = "none") -> dict:
    ds = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": offload}}}
    return ds if optimizer is None else {**ds, "optimizer": optimizer}


def test_on_cpu_adamw_becomes_torchs_fused_adamw_and_no_op_is_built():
    ds = zero2({"type": "AdamW", "params": {"lr": 1e-3}})
    assert deepspeed_ops.ops_for(ds) == ["FusedAdamBuilder"]
    deepspeed_ops.use_torch_adamw(ds)
    assert ds["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True, "fused": True}
    assert deepspeed_ops.ops_for(ds) == []


def test_on_a_gpu_torchs_fused_adamw_only_where_deepspeeds_cannot_be_loaded(monkeypatch, caplog):
    """No GPU here, so ``fused_adam_loadable`` (DeepSpeed's prebuilt ops, torch's CUDA_HOME) is made to give
    each answer in turn; what ``choose_adam`` does with each is the real code."""
    for loadable in (True, False):
        monkeypatch.setattr(deepspeed_ops, "fused_adam_loadable", lambda: loadable)
        ds = zero2({"type": "AdamW", "params": {"lr": 1e-3}})
        caplog.clear()
        deepspeed_ops.choose_adam(ds, on_cpu=False)
        assert deepspeed_ops.ops_for(ds) == ([] if not loadable else ["FusedAdamBuilder"])
        assert ("no CUDA toolkit to compile it: torch's fused AdamW instead" in caplog.text) == (not loadable)
    chosen = zero2({"type": "AdamW", "params": {"torch_adam": False}})
    deepspeed_ops.choose_adam(chosen, on_cpu=False)  # the user's own choice stands, and so does its failure
    assert chosen["optimizer"]["params"] == {"torch_adam": False}
    on_cpu = zero2({"type": "AdamW"})
    monkeypatch.setattr(deepspeed_ops, "fused_adam_loadable", lambda: True)
    deepspeed_ops.choose_adam(on_cpu, on_cpu=True)
    assert deepspeed_ops.ops_for(on_cpu) == []


def test_a_users_own_choice_and_offloaded_states_keep_deepspeeds_adam():
    chosen = zero2({"type": "Adam", "params": {"torch_adam": False}})
    deepspeed_ops.use_torch_adamw(chosen)
    assert chosen["optimizer"]["params"] == {"torch_adam": False}
    assert deepspeed_ops.ops_for(chosen) == ["FusedAdamBuilder"]
    offloaded = zero2({"type": "AdamW"}, offload="cpu")
    deepspeed_ops.use_torch_adamw(offloaded)
    assert "params" not in offloaded["optimizer"]
    assert deepspeed_ops.ops_for(offloaded) == ["CPUAdamBuilder"]
    assert deepspeed_ops.ops_for(zero2(None)) == []  # the Trainer's own optimizer


def test_the_shared_memory_all_reduce_is_built_only_for_autotp_which_calls_it():
    assert deepspeed_ops.ops_for({**zero2(None), "tensor_parallel": {"autotp_size": 2}}) == ["ShareMemCommBuilder"]
    assert deepspeed_ops.ops_for({**zero2(None), "tensor_parallel": {"autotp_size": 1}}) == []


class StandInBuilder:
    """Loads the way torch's extension loader does: behind a FileBaton on
    <TORCH_EXTENSIONS_DIR>/<name>/lock, waiting while the file exists. A real DeepSpeed op
    would take a minute or more of compiling to show the same."""

    NAME = "stand_in_op"
    loaded = False

    def is_compatible(self, verbose=False):
        return True

    def load(self, verbose=False):
        from torch.utils.file_baton import FileBaton

        lock = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / self.NAME / "lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        baton = FileBaton(str(lock))
        assert baton.try_acquire(), "torch would wait forever on this lock"
        baton.release()
        StandInBuilder.loaded = True


def test_a_build_lock_left_by_a_killed_process_is_removed_instead_of_waited_on(monkeypatch, tmp_path):
    import deepspeed.accelerator

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", os.environ["PATH"])
    stale = tmp_path / StandInBuilder.NAME / "lock"
    stale.parent.mkdir()
    stale.touch()
    accelerator = type("Accelerator", (), {"create_op_builder": lambda self, name: StandInBuilder()})()
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: accelerator)
    monkeypatch.setattr(deepspeed_ops, "ops_for", lambda ds_config: ["ShareMemCommBuilder"])
    deepspeed_ops.prepare({})
    assert StandInBuilder.loaded and not stale.exists()
