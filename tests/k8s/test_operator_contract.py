"""(b) The operator contract: a rendered PyTorchJob trains to completion with exactly the env the
Training Operator gives its pods.

No cluster runs here, so this test plays the operator. It renders sft as a PyTorchJob of
2 replicas (Master + 1 Worker) x 1 process, on CPU, with `launcher render --backend k8s`, and
starts one local process per replica running the container's command with the container's env
from the manifest plus what the Training Operator v1.9 adds to every pod (its envvar.go and
master.go): PYTHONUNBUFFERED=1; MASTER_ADDR and PET_MASTER_ADDR (the Master's Service name);
MASTER_PORT and PET_MASTER_PORT (the container port named pytorchjob-port); WORLD_SIZE =
replicas x nprocPerNode; RANK = PET_NODE_RANK = the replica's index (Master 0, Worker i + 1);
PET_NPROC_PER_NODE = nprocPerNode; PET_NNODES = replicas.

What is translated from the pod to this machine, and nothing more:
- the container paths: the workdir /opt/ft-recipes is this checkout, /etc/ft-recipes/config.yaml
  a temp file holding the ConfigMap's config.yaml, /outputs (the PVC) a temp dir, and `python`
  this venv's interpreter;
- what the image sets: PATH (with the venv's bin) and HOME are this machine's, and so is the model
  cache (RECIPES_CACHE / XDG_CACHE_HOME, if set), where the tiny model was prepared;
- the Master's Service name resolves to 127.0.0.1, and its port is a free local port (both
  "pods" are this host).

The job is small (the tiny-random-llama alias, a few rows of local data, 2 steps, gloo) and
evaluates before training, so it also shows that the two replicas stay identical (compared after
every step) when an evaluation comes first.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import k8s
from tests.conftest import REPO, run_launcher

pytestmark = pytest.mark.slow(minutes=1)  # trains a real model; make test starts the longest first

PATHS = {"/opt/ft-recipes": str(REPO)}  # container path -> this machine (more are added per test)
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def operator_env(job: dict, replica_type: str, index: int, master_address: str, port: int) -> dict[str, str]:
    """The env vars the Training Operator adds to the pod of one replica."""
    replicas = job["spec"]["pytorchReplicaSpecs"]
    total = sum(spec.get("replicas", 1) for spec in replicas.values())
    nproc = job["spec"]["nprocPerNode"]
    rank = index + 1 if replica_type == "Worker" else index
    return {"PYTHONUNBUFFERED": "1", "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port),
            "MASTER_ADDR": master_address, "PET_MASTER_ADDR": master_address, "WORLD_SIZE": str(total * int(nproc)),
            "RANK": str(rank), "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": nproc, "PET_NNODES": str(total)}


def translate(value: str, paths: dict[str, str]) -> str:
    for container_path, local in paths.items():
        if value == container_path or value.startswith(container_path + "/"):
            return local + value[len(container_path):]
    return value


def test_rendered_pytorchjob_trains_with_the_operators_env(tmp_path, tiny_model, small_hotel):
    rendered = run_launcher(
        "render", "recipes/sft", "--backend", "k8s", "--nodes", "2", "--env", "OMP_NUM_THREADS=1",
        "--set", f"model_name={tiny_model}", "--set", f"dataset_name={small_hotel['train']}",
        "--set", f"eval_dataset_name={small_hotel['eval']}", "--set", "max_steps=2", "--set", "save_steps=2",
        "--set", "batch_size=2", "--set", "logging_steps=1", "--set", "bf16=false", "--set", "eval_answer_field=null",
        "--set", "replica_check_steps=1")
    assert rendered.returncode == 0, rendered.stderr
    config_map, job = k8s.manifests(rendered.stdout)
    assert job["kind"] == "PyTorchJob" and job["spec"]["nprocPerNode"] == "1"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1

    # The ConfigMap's config, where the pods read it; outputs on the stand-in PVC.
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    paths = {**PATHS, "/outputs": str(outputs)}
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    output_dir = config["output_dir"]
    assert output_dir == f"/outputs/{job['metadata']['name']}"
    config["output_dir"] = translate(output_dir, paths)
    config_file = tmp_path / "etc-ft-recipes" / "config.yaml"
    config_file.parent.mkdir()
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    paths["/etc/ft-recipes/config.yaml"] = str(config_file)

    port = free_port()
    processes = []
    try:
        for replica_type in ("Master", "Worker"):
            pod = replicas[replica_type]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["name"] == "pytorch"
            assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"pytorchjob-port": k8s.MASTER_PORT}
            env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": os.environ["HOME"]}
            env.update({key: os.environ[key] for key in ("RECIPES_CACHE", "XDG_CACHE_HOME", "HF_HOME", "TMPDIR")
                        if key in os.environ})  # where this machine keeps the tiny model (the image's cache)
            for var in container.get("env", []):
                assert "valueFrom" not in var  # no Secrets in this job
                env[var["name"]] = translate(var["value"], paths)
            env.update(operator_env(job, replica_type, 0, "127.0.0.1", port))
            command = [translate(part, paths) for part in container["command"]]
            command[0] = sys.executable if command[0] == "python" else command[0]
            processes.append(subprocess.Popen(command, cwd=translate(container["workingDir"], paths), env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              start_new_session=True))
        outputs_text = []
        for proc in processes:
            out, _ = proc.communicate(timeout=TIMEOUT)
            outputs_text.append(out)
    finally:
        for proc in processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, out in zip(processes, outputs_text):
        assert proc.returncode == 0, out[-4000:]

    job_dir = Path(translate(output_dir, paths))
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 2
    assert metrics["eval_loss_before"] is not None and metrics["replicas_checked_at_steps"] == [1, 2]
    assert (job_dir / "checkpoint-2" / "COMPLETE").is_file()  # what a restarted pod resumes from


# On PYTHONPATH, this kills every training worker (torchrun sets LOCAL_RANK) as it starts, as an
# OOM kill or a bad GPU would at every attempt; the keeper itself runs.
KILL_EVERY_WORKER = """
import os, signal
if "LOCAL_RANK" in os.environ:
    os.kill(os.getpid(), signal.SIGKILL)
"""


def replaced(api: str, exit_code: int) -> bool:
    """Whether the controller recreates a pod that exited with ``exit_code``. PyTorchJob (restartPolicy
    ExitCode, the Training Operator v1.9): 128-255 yes, 1-127 no. TrainJob: the Job controller plays
    k8s/runtime.yaml's podFailurePolicy (tests/k8s/test_runtime.py)."""
    if exit_code == 0:
        return False
    if api == "pytorchjob":
        return exit_code >= 128
    from tests.k8s.test_runtime import RUNTIME, action_for

    return action_for(RUNTIME, exit_code) != "FailJob"


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_a_pod_killed_at_every_attempt_ends_the_job_once_its_retry_budget_is_spent(tmp_path, api):
    """The pod of a one-node job whose worker is SIGKILLed at every start exits 137 and is recreated by
    the controller (played here) until the job has failed max_retries + 1 times; that pod's keeper
    then exits 3, which the controller does not retry. Without the budget on the PVC, a PyTorchJob
    would be recreated forever (its backoffLimit does not count recreated pods)."""
    rendered = run_launcher("render", "recipes/sft", "--backend", "k8s", "--api", api, "--max-retries", "2",
                            "--env", "OMP_NUM_THREADS=1")
    assert rendered.returncode == 0, rendered.stderr
    config_map, job = k8s.manifests(rendered.stdout)
    if api == "pytorchjob":
        (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
        command, env_vars = container["command"], container["env"]
    else:
        command, env_vars = job["spec"]["trainer"]["command"], job["spec"]["trainer"]["env"]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_EVERY_WORKER)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    paths = {**PATHS, "/outputs": str(outputs), "/etc/ft-recipes/config.yaml": str(config_file)}
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": os.environ["HOME"],
           "PYTHONPATH": str(site)}
    env.update({var["name"]: translate(var["value"], paths) for var in env_vars})
    # The operator's env for one node (PyTorchJob: envvar.go; TrainJob: the torch plugin's PET_*).
    env.update({"PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1"})
    command = [sys.executable if part == "python" else translate(part, paths) for part in command]

    codes, logs = [], []
    while len(codes) < 6:
        env["PET_MASTER_PORT"] = str(free_port())
        pod = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        codes.append(pod.returncode)
        logs.append(pod.stdout + pod.stderr)
        if not replaced(api, pod.returncode):
            break
    assert codes == [137, 137, 3], logs[-1][-3000:]
    assert "exited with 137 (killed by SIGKILL; retried)" in logs[0]
    assert "the job failed 3 times and max_retries is 2" in logs[-1] and "not retried" in logs[-1]
    job_dir = outputs / job["metadata"]["name"]
    outcomes = [line.split()[:2] for line in (job_dir / "attempts.log").read_text().splitlines()]
    assert outcomes == [["started", "-"], ["failure", "137"]] * 3
