"""The built CPU image under podman (``make test-images``): what it holds, who runs in it, and a recipe
trained in it the way a hardened cluster runs pods: read-only root filesystem, no network, no
capabilities, every path a job writes a volume."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.images.dockerfile import REPO
from tests.images.engine import podman

pytestmark = [pytest.mark.image, pytest.mark.slow(minutes=2)]

HARDENED = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=1g,mode=1777", "--network", "none",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@pytest.fixture
def volume():
    """A fresh named volume (what a PVC or an emptyDir is to a pod); removed afterwards."""
    names = []

    def make() -> tuple[str, Path]:
        name = f"ft-recipes-test-{uuid.uuid4().hex[:8]}"
        podman("volume", "create", name)
        names.append(name)
        return name, Path(podman("volume", "inspect", name, "--format", "{{.Mountpoint}}").stdout.strip())

    yield make
    for name in names:
        podman("volume", "rm", "--force", name, check=False)


def test_the_installed_packages_are_exactly_the_lock(cpu_image):
    mounts = [arg for name in ("requirements.lock", "requirements-dev.lock", "images/verify_lock.py")
              for arg in ("--volume", f"{REPO / name}:/check/{Path(name).name}:ro")]
    result = podman("run", "--rm", "--network", "none", *mounts, cpu_image, "python", "/check/verify_lock.py",
                    "/check/requirements.lock", "--also", "/check/requirements-dev.lock:setuptools,wheel")
    assert "requirements.lock" in result.stdout + result.stderr


def test_it_runs_as_uid_1000_lists_every_recipe_and_keeps_pipefail(cpu_image):
    identity = podman("run", "--rm", "--network", "none", cpu_image, "id", "-u").stdout.split()
    assert identity == ["1000"]
    listed = podman("run", "--rm", "--network", "none", cpu_image, "launcher", "list").stdout
    for recipe in sorted(p.name for p in (REPO / "recipes").iterdir() if (p / "config.yaml").is_file()):
        assert recipe in listed
    # Built in Docker's format: the OCI format has no SHELL, and every RUN would lose pipefail.
    config = json.loads(podman("image", "inspect", cpu_image).stdout)[0]
    assert config["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"
    history = podman("image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", cpu_image).stdout
    assert "pipefail" in history or "/bin/bash -o pipefail -c" in history


def test_sft_trains_read_only_offline_without_capabilities_into_volumes(cpu_image, volume):
    outputs_name, outputs_dir = volume()
    cache_name, _ = volume()
    sets = ["model_name=tiny-random-llama", "max_steps=3", "save_steps=3", "seq_length=96", "batch_size=2",
            "bf16=false", "eval_answer_field=null", "output_dir=outputs/tiny-sft"]
    result = podman("run", "--rm", *HARDENED, "--volume", f"{outputs_name}:/outputs",
                    "--volume", f"{cache_name}:/cache/huggingface", cpu_image,
                    "launcher", "run", "recipes/sft", *(arg for item in sets for arg in ("--set", item)))
    log = result.stdout + result.stderr
    assert "Read-only file system" not in log, log[-3000:]
    out = outputs_dir / "tiny-sft"  # outputs/ in the workdir is the /outputs volume
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and (out / "checkpoint-3" / "COMPLETE").is_file()
    assert (out / "model" / "adapter_model.safetensors").is_file()
    owners = {path.stat().st_uid for path in [out, *out.rglob("*")]}
    assert owners == {1000}, owners
    assert os.stat(outputs_dir).st_uid in (0, 1000)
