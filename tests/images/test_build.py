"""`make images` (images/build.sh): the engine it picks, the tags it builds, and its one-line refusal.

The engines are stand-ins on a PATH that holds only the tools the Makefile and the script need,
so the tests are the same on a machine with a real engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import launcher
from launcher import images
from tests.images.dockerfile import REPO

TOOLS = ("sh", "bash", "cat", "cksum", "cut", "dirname", "sed", "git", "date", "tail", "mktemp", "rm")
STUB = """#!/bin/bash
echo "${0##*/} $*" >> "$ENGINE_LOG"
[ "$1" != info ] || exit INFO_RC
case " $OFFLINE " in *" ${0##*/} "*) [ "$1 $2" != "image inspect" ] && [ "$1" != pull ] || exit 1 ;; esac
"""
# A stand-in mmdebstrap that writes an empty root filesystem archive where it is told to.
MMDEBSTRAP = """#!/bin/bash
echo "mmdebstrap $*" >> "$ENGINE_LOG"
: > "${@: -1}"
"""
# A stand-in python3 whose pip configuration names a CA bundle and a wheel directory (as on the
# project's machines), and which cannot reach PyTorch's index.
PYTHON = """#!/bin/bash
if [ "$1 $2 $3 $4" = "-m pip config list" ]; then
  echo "global.cert='$PIP_TEST_CERT'"
  echo "global.find-links='$PIP_TEST_WHEELS'"
  exit 0
fi
exit 1
"""


def make_images(tmp_path: Path, engines: dict[str, int], *make_args: str, offline: tuple[str, ...] = (),
                extra_tools: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `make images` with stand-in engines ({name: exit code of `NAME info`}); return the result and their calls.

    The engines named in ``offline`` can neither find nor pull a base image (no registry reachable).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        if found := shutil.which(tool):  # git is optional: without it the revision label says "unknown"
            (bin_dir / tool).symlink_to(found)
    for name, script in {**{name: STUB.replace("INFO_RC", str(rc)) for name, rc in engines.items()},
                         **(extra_tools or {})}.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "engine.log"
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "ENGINE_LOG": str(log), "OFFLINE": " ".join(offline),
           "PIP_TEST_CERT": str(tmp_path / "ca.pem"), "PIP_TEST_WHEELS": str(tmp_path)}
    result = subprocess.run([shutil.which("make"), "-s", "images", *make_args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("make: ***")]


def test_without_any_engine_it_fails_with_one_clear_line(tmp_path):
    result, calls = make_images(tmp_path, {})
    assert result.returncode != 0
    assert our_lines(result.stderr) == [
        "make images: no working container engine here: none of docker, podman, buildah is installed; "
        "build the images where one runs (images/README.md)"]
    assert calls == []


def test_an_engine_that_does_not_answer_is_named(tmp_path):
    """As on the project's machines: `docker --version` works, but no daemon runs."""
    result, calls = make_images(tmp_path, {"docker": 1})
    assert result.returncode != 0
    lines = our_lines(result.stderr)
    assert len(lines) == 1 and "docker found, but `docker info` fails" in lines[0]
    assert calls == ["docker info"]


def build_calls(calls: list[str], engine: str) -> list[list[str]]:
    return [call.split()[1:] for call in calls if call.split()[:2] == [engine, "build"]]


def option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]


def test_docker_builds_both_images_with_the_launchers_default_tags(tmp_path):
    result, calls = make_images(tmp_path, {"docker": 0, "podman": 0})
    assert result.returncode == 0, result.stderr
    builds = build_calls(calls, "docker")
    assert [option(b, "--tag") for b in builds] == [[images.default_image("cuda")], [images.default_image("cpu")]]
    assert [option(b, "--target") for b in builds] == [["cuda"], ["cpu"]]
    for args in builds:
        assert option(args, "--file") == ["images/Dockerfile"] and args[-1] == "."
        assert f"VERSION={launcher.__version__}" in option(args, "--build-arg")
        assert any(arg.startswith("REVISION=") for arg in option(args, "--build-arg"))
    assert not any(call.startswith("podman") for call in calls), "the first working engine is used"


def test_registry_is_overridable_and_podman_gets_the_ignore_file(tmp_path):
    result, calls = make_images(tmp_path, {"docker": 1, "podman": 0}, "REGISTRY=registry.example.com/ml")
    assert result.returncode == 0, result.stderr
    builds = build_calls(calls, "podman")
    tag = f"{launcher.__version__}-cuda{images.CUDA}"
    assert option(builds[0], "--tag") == [f"registry.example.com/ml/{images.NAME}:{tag}"]
    assert all(option(b, "--ignorefile") == ["images/Dockerfile.dockerignore"] for b in builds)


def test_buildah_alone_is_enough(tmp_path):
    result, calls = make_images(tmp_path, {"buildah": 0})
    assert result.returncode == 0, result.stderr
    assert len(build_calls(calls, "buildah")) == 2


def test_build_script_is_executable():
    assert os.access(REPO / "images" / "build.sh", os.X_OK)


def test_without_a_registry_the_cpu_image_builds_on_a_bootstrapped_debian_base(tmp_path):
    """As on the project's machines: no registry, so no base can be pulled; the CUDA image is refused in
    one line and the CPU image builds on a Debian base made from Debian packages, said in one line."""
    (tmp_path / "ca.pem").write_text("a CA bundle\n")
    result, calls = make_images(tmp_path, {"podman": 0}, offline=("podman",),
                                extra_tools={"mmdebstrap": MMDEBSTRAP, "python3": PYTHON})
    assert result.returncode != 0  # the CUDA image could not be built
    assert our_lines(result.stderr) == [
        f"make images: cannot build {images.default_image('cuda')}: its base "
        "nvidia/cuda:12.8.1-devel-ubuntu22.04@sha256:6617a625f4090c76c545a0e7d63f2e441718ef9af7f4efe7dd1242a29e289fd7"
        " cannot be pulled (no registry reachable)",
        f"make images: not built: {images.default_image('cuda')}"]
    bootstrapped = [line for line in result.stdout.splitlines() if "bootstrapped from Debian packages" in line]
    assert len(bootstrapped) == 1 and "localhost/ft-recipes-base:bookworm" in bootstrapped[0]
    assert any(call.startswith("mmdebstrap --quiet --variant=minbase --include=python3.11,") for call in calls)
    assert any(call.startswith("podman import ") and call.endswith(" localhost/ft-recipes-base:bookworm")
               for call in calls)
    (build,) = build_calls(calls, "podman")
    args = option(build, "--build-arg")
    assert "CPU_BASE=localhost/ft-recipes-base:bookworm" in args and option(build, "--target") == ["cpu"]
    # pip's CA bundle and wheel directory reach the build as read-only mounts and build arguments,
    # and torch comes from the wheel directory, PyTorch's own index being unreachable.
    assert option(build, "--volume") == [f"{tmp_path / 'ca.pem'}:/run/pip-ca.pem:ro", f"{tmp_path}:{tmp_path}:ro"]
    assert {"PIP_CERT=/run/pip-ca.pem", f"PIP_FIND_LINKS={tmp_path}", "TORCH_INDEX=https://pypi.org/simple"} <= set(args)
    assert "--format" in build and option(build, "--format") == ["docker"]  # SHELL's pipefail survives


def test_docker_gets_no_host_paths(tmp_path):
    (tmp_path / "ca.pem").write_text("a CA bundle\n")
    result, calls = make_images(tmp_path, {"docker": 0}, extra_tools={"python3": PYTHON})
    assert result.returncode == 0, result.stderr
    assert all(not option(b, "--volume") for b in build_calls(calls, "docker"))
