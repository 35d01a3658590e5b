"""images/verify_lock.py, the check each image build runs on its installed packages."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

import pytest

from tests.images.dockerfile import REPO

spec = importlib.util.spec_from_file_location("verify_lock", REPO / "images" / "verify_lock.py")
verify_lock = sys.modules["verify_lock"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_lock)
Installed = verify_lock.Installed

LOCK = verify_lock.read_pins(REPO / "requirements.lock")
BUILD_TOOLS = verify_lock.read_pins(REPO / "requirements-dev.lock", {"setuptools", "wheel"})
LINUX = {**verify_lock.default_environment(), "platform_system": "Linux", "sys_platform": "linux"}
# The shape of a CUDA 12 build of torch: its runtime wheels are exact pins in its own metadata.
CUDA_RUNTIME = {"nvidia-cudnn-cu12": "9.10.2.21", "nvidia-nccl-cu12": "2.27.5", "triton": "3.5.0"}


REQUIRES = {name: tuple(importlib.metadata.distribution(name).requires or ()) for name in LOCK}


def image_environment() -> dict[str, Installed]:
    """The lock's packages at their pins, with the requirements they really declare (from this venv)."""
    installed = {name: Installed(version, REQUIRES[name]) for name, version in LOCK.items()}
    installed.update({name: Installed(version) for name, version in BUILD_TOOLS.items()})
    installed["pip"] = Installed("23.2.1")
    installed["ft-recipes"] = Installed("0.1.0", ("torch>=2.6", "click>=8.1"))
    return installed


def cuda_environment() -> dict[str, Installed]:
    installed = image_environment()
    torch = installed["torch"]
    installed["torch"] = Installed(f"{LOCK['torch']}+cu128", torch.requires + tuple(
        f'{name}=={version}; platform_system == "Linux"' for name, version in CUDA_RUNTIME.items()))
    installed.update({name: Installed(version) for name, version in CUDA_RUNTIME.items()})
    return installed


def test_the_lock_is_complete_with_the_build_tools():
    """What the CPU image installs meets every requirement its packages declare: nothing else is needed."""
    problems, extras = verify_lock.check(LOCK, image_environment(), BUILD_TOOLS, environment=LINUX)
    assert problems == [] and extras == []


def test_a_cuda_build_of_torch_may_bring_only_what_it_requires():
    problems, extras = verify_lock.check(LOCK, cuda_environment(), BUILD_TOOLS, ["torch"], environment=LINUX)
    assert problems == []
    assert extras == sorted(f"{name}=={version}" for name, version in CUDA_RUNTIME.items())
    problems, _ = verify_lock.check(LOCK, cuda_environment(), BUILD_TOOLS, environment=LINUX)
    assert problems == [f"{name} {version} is installed but not in the lock" for name, version in sorted(CUDA_RUNTIME.items())]


@pytest.mark.parametrize("change, expected", [
    (lambda env: env.update(numpy=Installed("0.1")), f"numpy 0.1 is installed, but {LOCK['numpy']} is pinned"),
    (lambda env: env.pop("peft"), f"peft=={LOCK['peft']} is pinned but not installed"),
    (lambda env: env.update(pytest=Installed("9.2.0")), "pytest 9.2.0 is installed but not in the lock"),
    (lambda env: env.update(torch=Installed("0.1+cpu")), f"torch 0.1+cpu is installed, but {LOCK['torch']} is pinned"),
    (lambda env: env.pop("setuptools"), f"setuptools=={BUILD_TOOLS['setuptools']} is pinned but not installed"),
    (lambda env: env.pop("mpmath"), "sympy requires mpmath"),
])
def test_what_is_not_exactly_the_lock_is_reported(change, expected):
    installed = image_environment()
    change(installed)
    problems, _ = verify_lock.check(LOCK, installed, BUILD_TOOLS, environment=LINUX)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_local_build_label_is_the_same_release_only_for_a_pin_without_one():
    assert verify_lock.same_release("2.13.0+cu128", "2.13.0")
    assert not verify_lock.same_release("2.13.0+cu128", "2.13.0+cpu")
    assert not verify_lock.same_release("2.13.0", "2.13.0+cpu")
    assert not verify_lock.same_release("2.13.0.post1", "2.13.0")


def test_command_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(verify_lock, "this_environment", image_environment)
    monkeypatch.setattr(verify_lock, "default_environment", lambda: LINUX)
    dev_lock = str(REPO / "requirements-dev.lock")
    assert verify_lock.main([str(REPO / "requirements.lock"), "--also", f"{dev_lock}:setuptools,wheel"]) == 0
    tools = ", ".join(f"{name}=={version}" for name, version in sorted(BUILD_TOOLS.items()))
    assert f"are installed exactly, with {tools}" in capsys.readouterr().out
    assert verify_lock.main([str(REPO / "requirements.lock")]) == 1
    assert f"setuptools {BUILD_TOOLS['setuptools']} is installed but not in the lock" in capsys.readouterr().err
    bad = tmp_path / "bad.lock"
    bad.write_text("torch>=2\n")
    assert verify_lock.main([str(bad)]) == 2
    assert "expected NAME==VERSION" in capsys.readouterr().err
