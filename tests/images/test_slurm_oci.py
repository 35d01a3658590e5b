"""Slurm running a recipe inside the built image, with Slurm's own OCI container support.

A second local two-node cluster (slurm/local-cluster.sh, in its own directory and on its own
ports) runs with an oci.conf whose runtime is runc (through tests/images/engine.py's shim on a
machine that needs it). The image becomes a bundle with images/oci_bundle.py, and `launcher
submit --container oci` sends an sft job of 2 nodes; each node's srun step runs torchrun in the
image, as uid 1000, writing to the shared directory the bundle mounts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_launcher
from tests.images import engine
from tests.slurm.test_cluster import log_of, submit, wait_done

pytestmark = [pytest.mark.image, pytest.mark.slow(minutes=3)]

CLUSTER = REPO / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="module")
def oci_cluster():
    """SLURM_CONF of a running local cluster whose steps can run OCI bundles; stopped afterwards."""
    from tests.slurm.conftest import missing

    if reason := missing():
        pytest.skip(reason)
    folder = tempfile.mkdtemp(prefix="ft-recipes-slurm-oci-")
    env = {**os.environ, "FT_SLURM_DIR": folder, "FT_SLURM_PORT": "16917", "FT_SLURM_OCI_RUNTIME": engine.oci_runtime()}
    started = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{folder}/slurm.conf"
    try:
        yield os.environ["SLURM_CONF"]
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared():
    """The cluster's shared filesystem, as the bundle mounts it; not under /tmp, which the bundle's own
    private /tmp would cover."""
    folder = Path(tempfile.mkdtemp(prefix="ft-recipes-shared-", dir="/var/tmp"))
    os.chown(folder, 1000, 1000)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bundle(tmp_path):
    """Where the image is unpacked (~3 GiB): removed afterwards, not kept with pytest's last temporary dirs."""
    yield tmp_path / "bundle"
    shutil.rmtree(tmp_path / "bundle", ignore_errors=True)


def test_sft_trains_on_two_nodes_inside_the_image(cpu_image, oci_cluster, shared, bundle, tmp_path):
    made = subprocess.run([sys.executable, str(REPO / "images" / "oci_bundle.py"), cpu_image, str(bundle),
                           "--mount", str(shared)], env={**os.environ, **engine.environment()},
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000} and config["root"]["readonly"] is True

    # A user's own profile for it, in their launcher.yaml.
    profiles = tmp_path / "config" / "ft-recipes" / "launcher.yaml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(yaml.safe_dump({"profiles": {"oci": {
        "container": "oci", "image": str(bundle), "workdir": "/opt/ft-recipes", "output_root": str(shared),
        "time": "00:20:00", "signal_lead": 60, "env": {"OMP_NUM_THREADS": "1"}}}}))
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    (shared / "sft-oci").mkdir()  # the job's directory, owned by the cluster user the bundle runs as
    os.chown(shared / "sft-oci", 1000, 1000)
    sets = ["model_name=tiny-random-llama", "max_steps=4", "save_steps=2", "seq_length=96", "batch_size=2",
            "bf16=false", "eval_answer_field=null", "logging_steps=1"]
    try:
        rendered = run_launcher("render", "recipes/sft", "--profile", "oci", "--nodes", "2", "--job-name", "sft-oci")
        assert rendered.returncode == 0, rendered.stderr
        assert f"--container={bundle} --export=OMP_NUM_THREADS" in rendered.stdout
        job_id = submit("recipes/sft", "--profile", "oci", "--nodes", "2", "--job-name", "sft-oci",
                        *(arg for item in sets for arg in ("--set", item)))
    finally:
        del os.environ["XDG_CONFIG_HOME"]
    (job,) = wait_done(job_id, timeout=600)
    log = log_of(job_id)
    assert job["JobState"] == "COMPLETED", log[:5000] + "\n...\n" + log[-3000:]  # the first attempt says why
    out = shared / "sft-oci"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 4
    assert metrics["replicas_checked_at_steps"] == [2, 4]
    assert (out / "model" / "adapter_model.safetensors").is_file()
    host_files = ("job.sbatch", "job-config.yaml", "attempts.log", "slurm-job-id")  # submit's and the batch shell's
    written = [p for p in out.rglob("*") if p.name not in host_files and "slurm-" not in p.name]
    assert written and {p.stat().st_uid for p in written} == {1000}  # trained in the image, as its user
