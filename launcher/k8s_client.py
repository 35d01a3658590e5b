"""The Kubernetes backend's cluster client: create, find, describe and delete jobs with the official
``kubernetes`` client (kubeconfig, or the pod's service account in a cluster).

Every failed call becomes one ``K8sError`` line that says what went wrong and what to do (RBAC,
a missing CRD, a missing namespace or PVC, a name that exists). The objects themselves come from
launcher/k8s.py, rendered; nothing here builds a manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from launcher.errors import BackendError

GROUPS = {  # kind -> (API group, version, plural); "" is the core/batch API
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs"),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "Job": ("batch", "v1", "jobs"),
}
# Which pods belong to a job, and which one's log `launcher logs` shows (rank 0).
POD_SELECTORS = {
    "PyTorchJob": ("training.kubeflow.org/job-name", "training.kubeflow.org/replica-type=master"),
    "TrainJob": ("jobset.sigs.k8s.io/jobset-name", "batch.kubernetes.io/job-completion-index=0"),
    "Job": ("batch.kubernetes.io/job-name", "batch.kubernetes.io/job-completion-index=0"),
}
CONTAINER = {"PyTorchJob": "pytorch", "TrainJob": "node", "Job": "worker"}


class K8sError(BackendError):
    """A cluster operation failed; the message is one line that says what to do."""


def one_line(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    flat = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in flat)
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


@dataclass
class Cluster:
    """A connection: the API client, the namespace to use, and where the credentials came from."""

    client: Any
    namespace: str
    source: str

    def api(self, name: str):
        from kubernetes import client

        return getattr(client, name)(self.client)


def connect(namespace: str | None = None, context: str | None = None) -> Cluster:
    """Credentials from the kubeconfig (KUBECONFIG or ~/.kube/config), else the pod's service account.

    The namespace is ``namespace``, else the kubeconfig context's, else the pod's, else "default".
    """
    from kubernetes import client, config

    files = os.environ.get("KUBECONFIG") or "~/.kube/config"  # read now: the client reads it at import
    try:
        contexts, active = config.list_kube_config_contexts(config_file=files)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if context and chosen is None:
            names = ", ".join(c["name"] for c in contexts)
            raise K8sError(f"--context: no context {context!r} in the kubeconfig (contexts: {names})")
        api_client = config.new_client_from_config(config_file=files, context=context, persist_config=False)
        return Cluster(api_client, namespace or (chosen or {}).get("context", {}).get("namespace") or "default",
                       f"kubeconfig context {(chosen or {}).get('name', '?')}")
    except config.ConfigException as exc:
        kubeconfig_problem = one_line(exc)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        pod_namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        found = pod_namespace.read_text().strip() if pod_namespace.is_file() else "default"
        return Cluster(client.ApiClient(configuration), namespace or found, "the pod's service account")
    raise K8sError(f"no Kubernetes credentials ({kubeconfig_problem.rstrip('.')}): point KUBECONFIG at a "
                   "kubeconfig (or "
                   "~/.kube/config), or run this inside the cluster")


def api_error(exc: Exception, what: str, cluster: Cluster, kind: str | None = None) -> K8sError:
    """One line for a failed API call: the cause in words, what to do, and the server's message."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(exc, ApiException):
        host = getattr(cluster.client.configuration, "host", "?")
        return K8sError(f"cannot reach the Kubernetes API server at {host} ({type(exc).__name__}): is the "
                        f"cluster up and your kubeconfig ({cluster.source}) current?")
    message, details = exc.reason or "", {}
    try:
        body = json.loads(exc.body or "{}")
        message, details = body.get("message", message), body.get("details") or {}
    except (TypeError, ValueError, AttributeError):
        pass
    server = f" (API server: {one_line(message)})" if message else ""
    if exc.status == 401:
        return K8sError(f"{what}: the API server refused your credentials ({cluster.source}); log in to the "
                        f"cluster again (an expired token?){server}")
    if exc.status == 403:
        return K8sError(f"{what}: forbidden by RBAC in namespace {cluster.namespace}: your user needs a Role that "
                        f"allows it (see k8s/README.md, section RBAC), or use --namespace for one where you "
                        f"may{server}")
    if exc.status == 404 and details.get("kind") == "namespaces":
        return K8sError(f"{what}: namespace {cluster.namespace} does not exist; give another with --namespace")
    if exc.status == 404 and kind in ("PyTorchJob", "TrainJob") and not details.get("name"):
        return missing_api(kind)  # the API group itself is missing: its CRD is not installed
    if exc.status == 409:
        return K8sError(f"{what}: it already exists in namespace {cluster.namespace}; a job of this name was "
                        f"submitted before (`launcher status` it, or submit again for a new name){server}")
    if exc.status in (400, 422):
        return K8sError(f"{what}: the API server refused the manifest{server}")
    return K8sError(f"{what}: HTTP {exc.status} {one_line(exc.reason)}{server}")


def missing_api(kind: str) -> K8sError:
    if kind == "PyTorchJob":
        return K8sError("this cluster has no PyTorchJob API (kubeflow.org/v1): the Kubeflow Training Operator is "
                        "not installed; install it (k8s/README.md), or use --api trainjob where Kubeflow Trainer v2 "
                        "is installed")
    if kind == "TrainJob":
        return K8sError("this cluster has no TrainJob API (trainer.kubeflow.org/v1alpha1): Kubeflow Trainer v2 is "
                        "not installed; install it (k8s/README.md), or use --api pytorchjob on clusters with the "
                        "Training Operator")
    return K8sError(f"this cluster does not serve {kind} objects")


def require_api(cluster: Cluster, kind: str) -> None:
    """Fail early, with a clear message, when the job kind's API (a CRD) is not installed."""
    group, version, plural = GROUPS[kind]
    if group == "batch":
        return
    from kubernetes.client.exceptions import ApiException

    try:
        resources = cluster.api("CustomObjectsApi").get_api_resources(group, version)
    except ApiException as exc:
        if exc.status == 404:
            raise missing_api(kind) from None
        if exc.status == 403:
            return  # discovery hidden from this user: the create below says what is wrong
        raise api_error(exc, f"checking for the {kind} API", cluster, kind) from None
    except Exception as exc:  # noqa: BLE001 - connection errors of every kind
        raise api_error(exc, f"checking for the {kind} API", cluster, kind) from None
    if resources is not None and plural not in [r.name for r in resources.resources or []]:
        raise missing_api(kind)


def check_pvc(cluster: Cluster, name: str) -> None:
    """The outputs PVC must exist, or the pods would wait forever; skipped if we may not read PVCs."""
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.api("CoreV1Api").read_namespaced_persistent_volume_claim(name, cluster.namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise K8sError(f"pvc: no PersistentVolumeClaim {name} in namespace {cluster.namespace}; the job writes "
                           f"its outputs and checkpoints there: create it (k8s/README.md, section Outputs) or give "
                           f"another with --pvc") from None
        if exc.status != 403:
            raise api_error(exc, f"reading PersistentVolumeClaim {name}", cluster) from None


def create(cluster: Cluster, body: dict, dry_run: bool) -> dict:
    """Create one rendered object; returns the object the server sent back."""
    kind = body["kind"]
    name = body["metadata"]["name"]
    extra = {"dry_run": "All"} if dry_run else {}
    try:
        if kind == "ConfigMap":
            created = cluster.api("CoreV1Api").create_namespaced_config_map(cluster.namespace, body, **extra)
            return cluster.client.sanitize_for_serialization(created)
        if kind == "Job":
            created = cluster.api("BatchV1Api").create_namespaced_job(cluster.namespace, body, **extra)
            return cluster.client.sanitize_for_serialization(created)
        group, version, plural = GROUPS[kind]
        return cluster.api("CustomObjectsApi").create_namespaced_custom_object(
            group, version, cluster.namespace, plural, body, **extra)
    except Exception as exc:  # noqa: BLE001 - ApiException and connection errors alike
        raise api_error(exc, f"creating {kind} {name}", cluster, kind) from None


def submit(cluster: Cluster, objects: list[dict], pvc: str, dry_run: bool = False) -> dict:
    """Create the ConfigMap and then the job of ``objects`` (server-side dry run with ``dry_run``);
    returns the created job.

    The ConfigMap comes first so that no pod starts without its config; it is then owned by the
    job, so deleting the job (or its TTL) deletes it too. If the job cannot be created, the
    ConfigMap is deleted again.
    """
    for obj in objects:
        obj["metadata"]["namespace"] = cluster.namespace
    config_map, job = objects
    require_api(cluster, job["kind"])
    check_pvc(cluster, pvc)
    create(cluster, config_map, dry_run)
    try:
        created = create(cluster, job, dry_run)
    except K8sError:
        if not dry_run:
            delete_config_map(cluster, config_map["metadata"]["name"])
        raise
    if not dry_run:
        own_config_map(cluster, config_map["metadata"]["name"], job, (created.get("metadata") or {}).get("uid"))
    return created


def own_config_map(cluster: Cluster, name: str, job: dict, uid: str | None) -> None:
    """Make ``job`` (created with ``uid``) the ConfigMap's owner (garbage collection); not fatal if not allowed."""
    if not uid:
        return
    group, version, _ = GROUPS[job["kind"]]
    owner = {"apiVersion": f"{group}/{version}", "kind": job["kind"], "name": job["metadata"]["name"], "uid": uid}
    try:
        cluster.api("CoreV1Api").patch_namespaced_config_map(
            name, cluster.namespace, {"metadata": {"ownerReferences": [owner]}})
    except Exception:  # noqa: BLE001 - `launcher cancel` deletes it anyway
        pass


def delete_config_map(cluster: Cluster, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.api("CoreV1Api").delete_namespaced_config_map(name, cluster.namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise api_error(exc, f"deleting ConfigMap {name}", cluster) from None


def find(cluster: Cluster, name: str, kind: str | None = None) -> tuple[str, dict]:
    """(kind, object) of job ``name``: of ``kind``, or whichever of PyTorchJob, TrainJob, Job it is."""
    from kubernetes.client.exceptions import ApiException

    for candidate in [kind] if kind else list(GROUPS):
        group, version, plural = GROUPS[candidate]
        try:
            if candidate == "Job":
                found = cluster.api("BatchV1Api").read_namespaced_job(name, cluster.namespace)
                return candidate, cluster.client.sanitize_for_serialization(found)
            return candidate, cluster.api("CustomObjectsApi").get_namespaced_custom_object(
                group, version, cluster.namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(exc, f"reading {candidate} {name}", cluster, candidate) from None
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"reading {name}", cluster) from None
    kinds = kind or "PyTorchJob, TrainJob or Job"
    raise K8sError(f"JOB: no {kinds} named {name} in namespace {cluster.namespace} (finished jobs are deleted "
                   f"after ttl_seconds_after_finished; see "
                   f"`kubectl get pytorchjobs,trainjobs,jobs -n {cluster.namespace}`)")


def pods(cluster: Cluster, kind: str, name: str, rank0: bool = False) -> list[dict]:
    """The job's pods, oldest first (``rank0``: only those of the first node / worker)."""
    label, first = POD_SELECTORS[kind]
    selector = f"{label}={name}" + (f",{first}" if rank0 else "")
    try:
        found = cluster.api("CoreV1Api").list_namespaced_pod(cluster.namespace, label_selector=selector)
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"listing the pods of {name}", cluster) from None
    items = cluster.client.sanitize_for_serialization(found).get("items") or []
    return sorted(items, key=lambda pod: (pod["metadata"].get("creationTimestamp") or "", pod["metadata"]["name"]))


def summary(kind: str, obj: dict, pod_list: list[dict], namespace: str) -> list[str]:
    """Lines for `launcher status`: the job's state and conditions, then one line per pod."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    current = [c for c in conditions if c.get("status") == "True"]
    state = current[-1]["type"] if current else "Pending"
    lines = [f"{kind} {obj['metadata']['name']} (namespace {namespace}): {state}"]
    for condition in conditions:
        text = f"  condition {condition.get('type')}={condition.get('status')}"
        if condition.get("reason"):
            text += f" ({one_line(condition['reason'], 80)})"
        if condition.get("message"):
            text += f": {one_line(condition['message'], 200)}"
        lines.append(text)
    for pod in pod_list:
        status = pod.get("status") or {}
        text = f"  pod {pod['metadata']['name']}: {status.get('phase', '?')}"
        for container in status.get("containerStatuses") or []:
            state_info = container.get("state") or {}
            if state_info.get("waiting"):
                text += f", waiting ({one_line(state_info['waiting'].get('reason', ''), 60)})"
            if state_info.get("terminated"):
                text += f", exit code {state_info['terminated'].get('exitCode')}"
            text += f", restarts {container.get('restartCount', 0)}"
        if (pod.get("spec") or {}).get("nodeName"):
            text += f" on {pod['spec']['nodeName']}"
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                text += f" (unschedulable: {one_line(condition.get('message', ''), 160)})"
        lines.append(text)
    if not pod_list:
        lines.append("  no pods yet")
    return lines


def status(cluster: Cluster, name: str, kind: str | None = None) -> list[str]:
    kind, obj = find(cluster, name, kind)
    return summary(kind, obj, pods(cluster, kind, name), cluster.namespace)


def logs(cluster: Cluster, name: str, follow: bool = False, kind: str | None = None) -> Iterator[str]:
    """The log of the job's rank-0 pod (the newest one, after restarts), streamed with ``follow``."""
    kind, _ = find(cluster, name, kind)
    first = pods(cluster, kind, name, rank0=True)
    if not first:
        raise K8sError(f"JOB: {kind} {name} has no pod yet; `launcher status {name} --backend k8s` says why")
    pod = first[-1]["metadata"]["name"]
    try:
        response = cluster.api("CoreV1Api").read_namespaced_pod_log(
            pod, cluster.namespace, container=CONTAINER[kind], follow=follow, _preload_content=False)
        for chunk in response.stream():
            yield chunk.decode("utf-8", errors="replace")
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"reading the log of pod {pod}", cluster) from None


def cancel(cluster: Cluster, name: str, kind: str | None = None) -> str:
    """Delete the job (its pods go with it) and its ConfigMap; returns the job's kind."""
    kind, _ = find(cluster, name, kind)
    group, version, plural = GROUPS[kind]
    try:
        if kind == "Job":
            cluster.api("BatchV1Api").delete_namespaced_job(name, cluster.namespace, propagation_policy="Background")
        else:
            cluster.api("CustomObjectsApi").delete_namespaced_custom_object(
                group, version, cluster.namespace, plural, name, propagation_policy="Background")
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"deleting {kind} {name}", cluster, kind) from None
    delete_config_map(cluster, f"{name}-config")
    return kind
