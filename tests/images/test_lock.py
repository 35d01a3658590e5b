"""The images install exactly requirements.lock: read from every pip command in images/Dockerfile.

Allowed besides ``pip install --no-deps -r requirements.lock``: pip itself at a pinned version,
setuptools and wheel at their requirements-dev.lock pins, torch at the lock's version in the
image's device build (+cu128 / +cpu, with the lock as constraints), the CUDA image's small extras
lock, and the project itself without dependencies. Each build then runs images/verify_lock.py,
which checks the installed result (tests/images/test_verify_lock.py).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from launcher import images
from tests.images import dockerfile
from tests.images.dockerfile import REPO

LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
CUDA_EXTRAS = "images/cuda-extras.lock"
BUILD_TOOLS = {"setuptools", "wheel"}
TORCH_BUILD = {"cuda-build": "cu" + images.CUDA.replace(".", ""), "cpu-build": "cpu"}
TORCH_VERSION_FROM_LOCK = re.compile(r"^torch==\$\((sed -n '[^']+' requirements\.lock)\)\+(\w+)$")

STAGES = dockerfile.parse()


def pins(path: str) -> dict[str, str]:
    found = {}
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[name.lower().replace("_", "-")] = version
    return found


def unexpected(build: str, install: dockerfile.PipInstall) -> str | None:
    """Why this pip command is not one of the allowed kinds, or None."""
    stage = STAGES[build]
    args = stage.args()
    if install.requirements == [LOCK]:
        if "--no-deps" not in install.flags or install.packages or install.index_url or install.constraints:
            return "the lock must be installed as is: pip install --no-deps -r requirements.lock"
        return None
    if install.requirements == [CUDA_EXTRAS] and build == "cuda-build":
        overlap = pins(CUDA_EXTRAS).keys() & pins(LOCK).keys()
        if "--no-deps" not in install.flags or overlap:
            return f"{CUDA_EXTRAS} must be installed --no-deps and pin nothing the lock pins (both pin {overlap})"
        return None
    if install.requirements:
        return f"installs an unexpected requirements file {install.requirements}"
    if install.editable:
        if install.editable != ["."] or not {"--no-deps", "--no-build-isolation"} <= install.flags:
            return "the project is installed as pip install --no-deps --no-build-isolation -e ."
        return None
    if install.packages == ["pip==${PIP_VERSION}"]:
        return None if re.fullmatch(r"\d+(\.\d+)+", args.get("PIP_VERSION", "")) else "PIP_VERSION is not pinned"
    if set(install.packages) == BUILD_TOOLS:
        pinned = pins(DEV_LOCK)
        if install.constraints != [DEV_LOCK] or "--no-deps" not in install.flags or not BUILD_TOOLS <= pinned.keys():
            return "setuptools and wheel must come --no-deps at their requirements-dev.lock pins (--constraint)"
        return None
    if len(install.packages) == 1 and (match := TORCH_VERSION_FROM_LOCK.match(install.packages[0])):
        variant = match[2]
        index = dockerfile.expand(install.index_url or "", args)
        if variant != TORCH_BUILD[build] or index != f"https://download.pytorch.org/whl/{variant}":
            return f"torch must be the {TORCH_BUILD[build]} build from PyTorch's {TORCH_BUILD[build]} index, got " \
                   f"+{variant} from {index}"
        if install.constraints != [LOCK]:
            return "torch's dependencies must be held at the lock's versions (--constraint requirements.lock)"
        return None
    return f"installs packages outside the lock: {install.packages}"


@pytest.mark.parametrize("build", sorted(TORCH_BUILD))
def test_every_pip_command_installs_the_lock_or_an_allowed_addition(build):
    installs = dockerfile.pip_installs(STAGES[build])
    assert [i.requirements for i in installs].count([LOCK]) == 1, "requirements.lock is installed exactly once"
    problems = [f"{' '.join(i.words)}: {why}" for i in installs if (why := unexpected(build, i))]
    assert problems == []


@pytest.mark.parametrize("build", sorted(TORCH_BUILD))
def test_the_lock_in_the_image_is_the_repository_lock(build):
    copies = [i.words() for i in STAGES[build].all("COPY")]
    assert any(LOCK in words and words[-1] == "./" for words in copies), "requirements.lock is copied from the root"
    assert STAGES[build].workdir() == "/opt/ft-recipes"


@pytest.mark.parametrize("build", sorted(TORCH_BUILD))
def test_torch_version_is_read_from_the_lock(build):
    """The Dockerfile's sed command, run on the real lock, gives the lock's torch version."""
    torch = next(i.packages[0] for i in dockerfile.pip_installs(STAGES[build]) if i.packages[:1]
                 and i.packages[0].startswith("torch=="))
    sed = TORCH_VERSION_FROM_LOCK.match(torch)[1]
    out = subprocess.run(sed, shell=True, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == pins(LOCK)["torch"]


@pytest.mark.parametrize("build", sorted(TORCH_BUILD))
def test_the_build_verifies_the_installed_packages_after_the_last_pip_command(build):
    commands = STAGES[build].runs()
    last_pip = max(i for i, words in enumerate(commands) if words[:2] == ["pip", "install"])
    verify = [i for i, words in enumerate(commands) if words[:2] == ["python", "images/verify_lock.py"]]
    assert verify and verify[-1] > last_pip, "images/verify_lock.py runs after the last pip install"
    args = commands[verify[-1]][2:]
    assert args[0] == LOCK
    expected = ["--also", f"{DEV_LOCK}:setuptools,wheel"]
    if build == "cuda-build":
        expected += ["--also", CUDA_EXTRAS, "--requirements-of", "torch"]
    assert args[1:] == expected, "only the CUDA image may hold what torch's CUDA build requires"


def test_final_images_install_nothing_themselves():
    for target, build in dockerfile.FINAL_STAGES.items():
        stage = STAGES[target]
        assert dockerfile.pip_installs(stage) == [], f"{target} installs packages outside its build stage"
        assert any(i.words() == [f"--from={build}", "/opt/ft-recipes/.venv", "/opt/ft-recipes/.venv"]
                   for i in stage.all("COPY")), f"{target} takes the venv from {build}"


def test_unexpected_pip_commands_are_caught():
    """The rules above reject what they exist to reject."""
    def install(text: str) -> dockerfile.PipInstall:
        stage = dockerfile.Stage("cpu-build", "x", [dockerfile.Instruction("RUN", text, 1)])
        return dockerfile.pip_installs(stage)[0]

    assert unexpected("cpu-build", install("pip install --no-deps -r requirements.lock")) is None
    assert unexpected("cpu-build", install("pip install -r requirements.lock"))  # would resolve new versions
    assert unexpected("cpu-build", install("pip install --no-deps pytest==9.2.0"))
    assert unexpected("cpu-build", install("pip install --no-deps -r requirements-dev.lock"))
    assert unexpected("cpu-build", install("pip install --no-deps -r images/cuda-extras.lock"))
    assert unexpected("cpu-build", install("pip install --no-deps setuptools wheel"))  # unpinned
    cu128 = "pip install --constraint requirements.lock --index-url https://download.pytorch.org/whl/cu128 " \
            "\"torch==$(sed -n 's/^torch==//p' requirements.lock)+cu128\""
    assert unexpected("cpu-build", install(cu128))
    assert unexpected("cuda-build", install(cu128)) is None
    assert unexpected("cuda-build", install(cu128.replace("--constraint requirements.lock ", "")))
