"""The real two-node Slurm cluster (slurm/local-cluster.sh), shared by every test that needs it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

CLUSTER = REPO / "slurm" / "local-cluster.sh"
HOW_TO = ("to run them: apt-get install slurm-wlm munge (as root; .ci/run does it), "
          "or start a cluster yourself with slurm/local-cluster.sh start")


def missing() -> str | None:
    """Why the real-cluster tests cannot run here, or None."""
    absent = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(tool) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} not found)"
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root"
    return None


def cluster(*args: str) -> subprocess.CompletedProcess:
    # 4 CPUs a node on 2 cores: the tests' small jobs, each taking one CPU a node, run side by side.
    env = {**os.environ, "FT_SLURM_CPUS": os.environ.get("FT_SLURM_CPUS", "4")}
    return subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running two-node cluster; started (and stopped afterwards) unless one runs already.

    Without Slurm the tests skip, saying how to enable them; with CI set they fail instead.
    """
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the real-Slurm tests must run, but {reason}")
        pytest.skip(f"{reason}; {HOW_TO}")
    state_dir = os.environ.get("FT_SLURM_DIR", "/tmp/ft-recipes-slurm")
    conf = f"{state_dir}/slurm.conf"
    already = cluster("status").returncode == 0
    if not already:
        started = cluster("start")
        if started.returncode != 0:
            pytest.fail(f"slurm/local-cluster.sh start failed:\n{started.stdout}{started.stderr}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if not already:
            cluster("stop")
