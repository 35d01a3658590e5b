"""The pods the rendered Kubernetes jobs create, run in the built CPU image with ``podman kube play``.

No Kubernetes API server or controller runs here, so these tests play the controllers' part, as
their documentation describes it, and nothing more:
- PyTorchJob (Training Operator v1.9): each replica's pod template becomes a Pod with the env the
  operator adds (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_*; see tests/k8s/test_operator_contract.py).
  Under ``restartPolicy: ExitCode`` the operator recreates a pod that exits 128-255; the test does
  the same by playing the pods again.
- TrainJob (Trainer v2, ``torch-distributed`` runtime): each node's pod is the job's runtime patch
  (security, volumes, mounts) with the ``node`` container running ``spec.trainer``'s image, command
  and env, plus what the torch plugin sets: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
  PET_MASTER_ADDR, PET_MASTER_PORT.
- An indexed batch Job (a search recipe's workers): one pod per index with JOB_COMPLETION_INDEX.

What is translated from a cluster to this machine: every pod uses the host's network (podman
refuses port mappings there, so the container ports are dropped) and the Master's Service name
is 127.0.0.1 on a free port; the PVC is a named podman volume of the claim's name, owned by uid
1000 as the kubelet's fsGroup would make it; GPU scheduling (resources, nodeSelector,
tolerations) is dropped; a pod's restartPolicy is Never, the tests deciding what a controller
would restart. Everything else (the image, command, env, security context, read-only root
filesystem, volumes and mounts) is the manifest's.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from launcher import k8s
from tests.conftest import read_metrics, run_launcher
from tests.images.engine import podman
from tests.k8s.test_operator_contract import free_port, operator_env

pytestmark = [pytest.mark.image, pytest.mark.slow(minutes=4)]

TINY = ["model_name=tiny-random-llama", "seq_length=96", "batch_size=2", "bf16=false", "eval_answer_field=null",
        "logging_steps=1"]


def render(recipe: str, image: str, claim: str, *args: str) -> tuple[dict, dict]:
    """``launcher render --backend k8s`` of the recipe in this image onto this PVC: (ConfigMap, job)."""
    rendered = run_launcher("render", f"recipes/{recipe}", "--backend", "k8s", "--image", image, "--pvc", claim,
                            "--env", "OMP_NUM_THREADS=1", *args)
    assert rendered.returncode == 0, rendered.stderr
    return k8s.manifests(rendered.stdout)


def as_pod(name: str, spec: dict, extra_env: dict[str, str]) -> dict:
    """A Pod of this pod spec, with the controller's env and the translations of the module docstring."""
    spec = copy.deepcopy(spec)
    spec.update(hostNetwork=True, restartPolicy="Never")
    for key in ("nodeSelector", "tolerations"):
        spec.pop(key, None)
    for container in spec["containers"]:
        container.pop("ports", None)
        container.pop("resources", None)
        container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in extra_env.items())]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


class Play:
    """Pods played with ``podman kube play`` next to their ConfigMap, on one PVC volume."""

    def __init__(self, tmp_path: Path, claim: str):
        self.tmp_path, self.claim, self.files, self.config_maps = tmp_path, claim, [], set()
        podman("volume", "create", claim)
        self.volume = Path(podman("volume", "inspect", claim, "--format", "{{.Mountpoint}}").stdout.strip())
        os.chown(self.volume, 1000, 1000)  # what the pods' fsGroup: 1000 makes of it

    def start(self, config_map: dict, pods: list[dict]) -> list[str]:
        """Play the pods (again, if they ran before); returns their containers' names."""
        path = self.tmp_path / f"play-{len(self.files)}.yaml"
        path.write_text(yaml.safe_dump_all([config_map, *pods], sort_keys=False))
        self.files.append(path)
        self.config_maps.add(config_map["metadata"]["name"])
        podman("kube", "play", "--replace", str(path))
        return [f"{pod['metadata']['name']}-{c['name']}" for pod in pods for c in pod["spec"]["containers"]]

    def wait(self, containers: list[str], timeout: float = 900) -> dict[str, int]:
        codes = {}
        for name in containers:
            codes[name] = int(podman("wait", name, timeout=timeout).stdout.strip())
        return codes

    def logs(self, container: str) -> str:
        result = podman("logs", container, check=False)
        return result.stdout + result.stderr

    def close(self) -> None:
        for path in self.files:
            podman("kube", "down", str(path), check=False)
        # kube play keeps each ConfigMap as a volume of its name, which kube down leaves behind.
        for name in [self.claim, *self.config_maps]:
            podman("volume", "rm", "--force", name, check=False)


@pytest.fixture
def play(tmp_path):
    plays = []

    def make(claim: str) -> Play:
        plays.append(Play(tmp_path, claim))
        return plays[-1]

    yield make
    for each in plays:
        each.close()


def claim_name() -> str:
    return f"ft-test-{uuid.uuid4().hex[:8]}"


def job_dir(play: Play, config_map: dict) -> Path:
    output_dir = yaml.safe_load(config_map["data"]["config.yaml"])["output_dir"]
    assert output_dir.startswith("/outputs/")
    return play.volume / output_dir.removeprefix("/outputs/")


def test_pytorchjob_replicas_train_stop_on_sigterm_with_143_and_resume_when_recreated(cpu_image, play):
    claim = claim_name()
    steps = ["max_steps=40", "save_steps=2", "save_total_limit=null"]
    config_map, job = render("sft-zero2", cpu_image, claim, "--nodes", "2", "--env", "DS_ACCELERATOR=cpu",
                             *(arg for item in [*TINY, *steps] for arg in ("--set", item)))
    assert job["kind"] == "PyTorchJob"
    name, replicas = job["metadata"]["name"], job["spec"]["pytorchReplicaSpecs"]
    for spec in replicas.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    port = free_port()
    pods = [as_pod(f"{name}-{kind.lower()}-0", replicas[kind]["template"]["spec"],
                   operator_env(job, kind, 0, "127.0.0.1", port)) for kind in ("Master", "Worker")]
    pvc = play(claim)
    out = job_dir(pvc, config_map)

    # Preempted: SIGTERM to the Master's pod once a checkpoint exists; every rank saves and exits 143.
    containers = pvc.start(config_map, pods)
    deadline = time.monotonic() + 600
    while not (out / "checkpoint-2" / "COMPLETE").exists():
        assert time.monotonic() < deadline, pvc.logs(containers[0])[-3000:]
        time.sleep(0.2)
    podman("kill", "--signal", "TERM", containers[0])
    codes = pvc.wait(containers)
    assert codes[containers[0]] == 143, pvc.logs(containers[0])[-3000:]
    assert all(code == 143 for code in codes.values()), {c: pvc.logs(c)[-2000:] for c in containers}
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "COMPLETE").is_file())
    assert saved and not (out / "model").exists()

    # The operator recreates pods that exited 143: they resume from the newest complete checkpoint.
    port = free_port()
    pods = [as_pod(f"{name}-{kind.lower()}-0", replicas[kind]["template"]["spec"],
                   operator_env(job, kind, 0, "127.0.0.1", port)) for kind in ("Master", "Worker")]
    containers = pvc.start(config_map, pods)
    codes = pvc.wait(containers)
    assert set(codes.values()) == {0}, {c: pvc.logs(c)[-3000:] for c in containers}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == f"/outputs/{name}/checkpoint-{saved[-1]}"
    assert metrics["world_size"] == 2 and metrics["global_step"] == 40
    assert [row["step"] for row in metrics["log_history"] if "loss" in row] == list(range(1, 41))
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert {p.stat().st_uid for p in out.rglob("*")} == {1000}


def test_trainjob_node_pods_train_with_the_torch_plugins_env(cpu_image, play):
    claim = claim_name()
    config_map, job = render("sft", cpu_image, claim, "--nodes", "2", "--api", "trainjob",
                             *(arg for item in [*TINY, "max_steps=4", "save_steps=2"] for arg in ("--set", item)))
    assert job["kind"] == "TrainJob"
    trainer = job["spec"]["trainer"]
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    spec = copy.deepcopy(node["template"]["spec"]["template"]["spec"])
    (container,) = spec["containers"]
    assert container["name"] == "node"
    container.update(image=trainer["image"], command=trainer["command"], env=trainer.get("env", []))
    if "args" in trainer:
        container["args"] = trainer["args"]
    port, name = free_port(), job["metadata"]["name"]
    pods = [as_pod(f"{name}-node-0-{rank}", spec, {
        "PET_NNODES": str(trainer["numNodes"]), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
        "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)})
        for rank in range(trainer["numNodes"])]
    pvc = play(claim)
    containers = pvc.start(config_map, pods)
    codes = pvc.wait(containers)
    assert set(codes.values()) == {0}, {c: pvc.logs(c)[-3000:] for c in containers}
    out = job_dir(pvc, config_map)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 4
    assert (out / "checkpoint-4" / "COMPLETE").is_file() and (out / "model").is_dir()


def test_search_workers_are_indexed_pods_sharing_one_study(cpu_image, play):
    from optuna.trial import TrialState

    from tests.recipes.test_optuna import load_trials

    claim = claim_name()
    search = ["max_steps=4", "eval_every_steps=2", "save_steps=100", "n_trials=2", "prune=false",
              "tpe_n_startup_trials=2"]
    config_map, job = render("optuna", cpu_image, claim, "--workers", "2",
                             *(arg for item in [*TINY, *search] for arg in ("--set", item)))
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    name = job["metadata"]["name"]
    pods = [as_pod(f"{name}-{index}", job["spec"]["template"]["spec"], {"JOB_COMPLETION_INDEX": str(index)})
            for index in range(job["spec"]["completions"])]
    pvc = play(claim)
    containers = pvc.start(config_map, pods)
    codes = pvc.wait(containers)
    assert set(codes.values()) == {0}, {c: pvc.logs(c)[-3000:] for c in containers}
    out = job_dir(pvc, config_map)
    trials = load_trials(out / "study.journal")
    assert len(trials) >= 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both pods ran trials of the one study
    assert read_metrics(out)["best_trial"] in {t.number for t in trials}
