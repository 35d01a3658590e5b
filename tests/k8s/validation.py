"""What a cluster would check in a rendered manifest, without a cluster: ``problems(obj)`` lists them.

1. **The published models, strictly.** PyTorchJob against the ``kubeflow-training`` SDK models
   (with the ``kubernetes`` client's models for pod templates), TrainJob against the
   ``kubeflow-trainer-api`` models; every field name must be one the model declares (the SDKs
   themselves drop unknown fields silently), every value of the declared type, required fields set.
2. **The core schemas.** ConfigMap and Job, and every pod template (as a PodTemplate), against
   ``kubernetes-validate``'s strict schemas (no unknown fields).
3. **The CRDs' and webhooks' own rules**, stricter than the SDK models. Written down here from the
   Training Operator v1.9 PyTorchJob CRD and validating webhook, and the Kubeflow Trainer v2.3
   TrainJob CRD (its CEL rules, length and item limits) and webhook (runtime patches), the
   ClusterTrainingRuntime CRD and webhook (k8s/runtime.yaml, the runtime TrainJobs run on: one
   replicated job and container, both "node"), and batch/v1's rules for a Job's podFailurePolicy.
4. **The API server's syntax rules** for names, labels, annotations, env vars, quantities, and the
   uniqueness of list entries (containers, volumes, mounts, env).
5. **The Restricted Pod Security Standard** for every pod and container.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing

import kubeflow.training.models as training_models
from kubeflow.training.api_client import ApiClient as TrainingApiClient
import kubeflow_trainer_api.models as trainer_models
from kubernetes_validate import utils as kubernetes_validate
from pydantic import BaseModel

K8S_VERSION = "1.30"  # the oldest Kubernetes the Training Operator v1.9 and Trainer v2.3 support
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"  # the CRDs' pattern for quantities
                      r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DOMAIN_PREFIXED_PATH = re.compile(r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")
INT32 = 2**31 - 1

# Training Operator v1.9: PyTorchJob CRD and webhook.
PYTORCH_REPLICA_TYPES = ("Master", "Worker")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("All", "Running", "None")
RUN_POLICY_MANAGERS = ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue")
# Kubeflow Trainer v2.3: TrainJob CRD, webhook, and the torch-distributed runtime.
TRAINJOB_MANAGERS = ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue")
TORCH_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
RUNTIME_CONTAINERS = {"node": {"node"}}  # torch-distributed: replicated job -> its containers
# Restricted Pod Security Standard.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def problems(obj: dict) -> list[str]:
    """Everything a cluster would refuse in ``obj`` (a rendered object), as 'path: problem' lines."""
    kind = obj.get("kind")
    found = metadata_problems(obj.get("metadata") or {}, "metadata")
    if kind == "ConfigMap":
        found += core_problems(obj) + configmap_problems(obj)
    elif kind == "Job":
        found += core_problems(obj) + pod_template_problems(obj["spec"]["template"], "spec.template")
    elif kind == "PyTorchJob":
        found += sdk_problems(obj, "KubeflowOrgV1PyTorchJob") + pytorchjob_problems(obj)
        for rtype, replica in (obj.get("spec", {}).get("pytorchReplicaSpecs") or {}).items():
            found += pod_template_problems(replica.get("template") or {}, f"spec.pytorchReplicaSpecs.{rtype}.template")
    elif kind == "TrainJob":
        found += pydantic_problems(obj, trainer_models.TrainerV1alpha1TrainJob) + trainjob_problems(obj)
    elif kind == "ClusterTrainingRuntime":
        found += pydantic_problems(obj, trainer_models.TrainerV1alpha1ClusterTrainingRuntime) + runtime_problems(obj)
    else:
        found.append(f"kind: unexpected {kind!r}")
    return found


# ---------------------------------------------------------------------------------------------
# 1. The SDK models, with unknown fields as errors


class _Response:
    def __init__(self, data: str):
        self.data = data


def sdk_problems(obj: dict, model: str) -> list[str]:
    """kubeflow-training (OpenAPI-generated) models: a strict walk, then the SDK's own deserializer."""
    found = _sdk_walk(obj, model, "")
    if not found:
        try:
            TrainingApiClient().deserialize(_Response(json.dumps(obj)), model)
        except (ValueError, TypeError) as exc:
            found.append(f"{model}: the SDK refuses it: {exc}")
    return found


def _sdk_walk(value, type_name: str, path: str) -> list[str]:
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [p for i, item in enumerate(value) for p in _sdk_walk(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        inner = re.fullmatch(r"dict\(str, (.*)\)", type_name).group(1)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return [f"{path}: expected a mapping with string keys, got {value!r}"]
        return [p for k, item in value.items() for p in _sdk_walk(item, inner, f"{path}.{k}")]
    primitive = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str,
                 "date": str}
    if type_name in primitive:
        ok = isinstance(value, primitive[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    model = getattr(training_models, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} object, got {value!r}"]
    by_key = {key: attr for attr, key in model.attribute_map.items()}
    found = [f"{path}.{key}: not a field of {type_name}" for key in value if key not in by_key]
    for key, item in value.items():
        if key in by_key and item is not None:
            found += _sdk_walk(item, model.openapi_types[by_key[key]], f"{path}.{key}".lstrip("."))
    return found


def pydantic_problems(obj: dict, model: type[BaseModel]) -> list[str]:
    """kubeflow-trainer-api (pydantic) models: a strict walk, then the model's own validation."""
    found = _pydantic_walk(obj, model, "")
    if not found:
        try:
            model.from_dict(obj)
        except ValueError as exc:
            found.append(f"{model.__name__}: the SDK refuses it: {' '.join(str(exc).split())[:300]}")
    return found


def _unwrap(annotation):
    """The type inside Optional[...] / Annotated[...] (pydantic's StrictStr is Annotated[str, ...])."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _pydantic_walk(value, annotation, path: str) -> list[str]:
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        (inner,) = typing.get_args(annotation)
        return [p for i, item in enumerate(value) for p in _pydantic_walk(item, inner, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        inner = typing.get_args(annotation)[1]
        return [p for k, item in value.items() for p in _pydantic_walk(item, inner, f"{path}.{k}")]
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        if "actual_instance" in annotation.model_fields:
            return []  # a oneOf wrapper (Quantity, IntOrString): the model validates the scalar
        if not isinstance(value, dict):
            return [f"{path}: expected a {annotation.__name__} object, got {value!r}"]
        by_key = {(f.alias or name): f.annotation for name, f in annotation.model_fields.items()}
        found = [f"{path}.{key}: not a field of {annotation.__name__}" for key in value if key not in by_key]
        for key, item in value.items():
            if key in by_key and item is not None:
                found += _pydantic_walk(item, by_key[key], f"{path}.{key}".lstrip("."))
        return found
    return []  # scalars: the model's own (strict) validation checks their types


# ---------------------------------------------------------------------------------------------
# 2. Core kinds and pod templates against the Kubernetes schemas


def core_problems(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{obj.get('kind')} {where}: {exc.message[:300]}"]
    return []


def pod_template_problems(template: dict, path: str) -> list[str]:
    """A pod template: the core schema (as a PodTemplate), the API server's rules, Restricted."""
    found = core_problems({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
    found += metadata_problems(template.get("metadata") or {}, f"{path}.metadata")
    spec = template.get("spec") or {}
    found += pod_spec_problems(spec, f"{path}.spec") + restricted_problems(spec, f"{path}.spec")
    return found


# ---------------------------------------------------------------------------------------------
# 3. The CRDs' and webhooks' rules


def _int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def pytorchjob_problems(job: dict) -> list[str]:
    found = []
    name = job["metadata"].get("name", "")
    if not DNS1035.fullmatch(name) or len(name) > 63:
        found.append(f"metadata.name: must be a DNS-1035 label (webhook), got {name!r}")
    spec = job.get("spec") or {}
    replicas = spec.get("pytorchReplicaSpecs")
    if not replicas:
        return found + ["spec.pytorchReplicaSpecs: required"]
    for rtype, replica in replicas.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in PYTORCH_REPLICA_TYPES:
            found.append(f"{where}: replica type must be Master or Worker")
        count = replica.get("replicas", 1)
        if rtype == "Master" and count != 1:
            found.append(f"{where}.replicas: must be 1")
        if not _int(count, 1, INT32):
            found.append(f"{where}.replicas: must be at least 1 (int32)")
        if replica.get("restartPolicy", "Never") not in RESTART_POLICIES:
            found.append(f"{where}.restartPolicy: must be one of {RESTART_POLICIES}")
        containers = ((replica.get("template") or {}).get("spec") or {}).get("containers") or []
        if not any(c.get("name") == "pytorch" for c in containers):
            found.append(f"{where}: needs a container named pytorch")
        found += [f"{where}: container {c.get('name')} needs an image" for c in containers if not c.get("image")]
        # The operator names a Service and a pod after each replica: <job>-<type>-<index>.
        longest = f"{name}-{rtype.lower()}-{max(count - 1, 0) if _int(count, 1, INT32) else 0}"
        if len(longest) > 63:
            found.append(f"metadata.name: the replica name {longest} is longer than 63 characters")
    nproc = spec.get("nprocPerNode")
    if nproc is not None and not (isinstance(nproc, str) and (nproc == "auto" or re.fullmatch(r"[1-9][0-9]*", nproc))):
        found.append(f"spec.nprocPerNode: must be 'auto' or a positive integer string, got {nproc!r}")
    if "elasticPolicy" in spec:
        found.append("spec.elasticPolicy: not expected (static rendezvous)")
    policy = spec.get("runPolicy") or {}
    if policy.get("cleanPodPolicy", "None") not in CLEAN_POD_POLICIES:
        found.append(f"spec.runPolicy.cleanPodPolicy: must be one of {CLEAN_POD_POLICIES}")
    for key, low, high in (("backoffLimit", 0, INT32), ("ttlSecondsAfterFinished", 0, INT32),
                           ("activeDeadlineSeconds", 1, 2**63 - 1)):
        if key in policy and not _int(policy[key], low, high):
            found.append(f"spec.runPolicy.{key}: must be an integer from {low} to {high}")
    if "managedBy" in policy and policy["managedBy"] not in RUN_POLICY_MANAGERS:
        found.append("spec.runPolicy.managedBy: not a supported manager")
    return found


def trainjob_problems(job: dict) -> list[str]:
    found = []
    name = job["metadata"].get("name", "")
    if not DNS1035.fullmatch(name) or len(name) > 63:
        found.append(f"metadata.name: must be an RFC 1035 label of at most 63 characters (CEL), got {name!r}")
    spec = job.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    if not 1 <= len(ref.get("name") or "") <= 253:
        found.append("spec.runtimeRef.name: required, 1 to 253 characters")
    for key in ("apiGroup", "kind"):
        if len(ref.get(key) or "") > 253:
            found.append(f"spec.runtimeRef.{key}: at most 253 characters")
    if "activeDeadlineSeconds" in spec and not _int(spec["activeDeadlineSeconds"], 1, 2**63 - 1):
        found.append("spec.activeDeadlineSeconds: minimum 1")
    if "managedBy" in spec and spec["managedBy"] not in TRAINJOB_MANAGERS:
        found.append("spec.managedBy: not a supported manager")
    trainer = spec.get("trainer") or {}
    if len(trainer.get("image") or "") > 500:
        found.append("spec.trainer.image: at most 500 characters")
    for key in ("command", "args"):
        items = trainer.get(key) or []
        if len(items) > 128 or any(len(item) > 1024 * 1024 for item in items):
            found.append(f"spec.trainer.{key}: at most 128 items of at most 1 MiB")
    env = trainer.get("env") or []
    found += _env_problems(env, "spec.trainer.env", max_items=128)
    reserved = sorted({e.get("name") for e in env} & TORCH_RESERVED_ENV)
    if reserved:
        found.append(f"spec.trainer.env: must not have reserved envs {reserved} (torch plugin)")
    for key in ("numNodes", "numProcPerNode"):
        if key in trainer and not _int(trainer[key], 1, INT32):
            found.append(f"spec.trainer.{key}: must be a positive int32")
    for kind, quantities in (trainer.get("resourcesPerNode") or {}).items():
        found += [f"spec.trainer.resourcesPerNode.{kind}.{k}: not a quantity" for k, v in quantities.items()
                  if not QUANTITY.match(str(v))]
    nodes = trainer.get("numNodes", 1) if _int(trainer.get("numNodes", 1), 1, INT32) else 1
    # JobSet names each pod's hostname <job>-<replicated job>-<job index>-<pod index>: a DNS label.
    if len(f"{name}-node-0-{max(nodes - 1, 0)}") > 63:
        found.append("metadata.name: too long for the JobSet's pod hostnames (63 characters)")
    patches = spec.get("runtimePatches") or []
    if len(patches) > 16 or len({p.get("manager") for p in patches}) != len(patches):
        found.append("spec.runtimePatches: at most 16, one per manager")
    for i, patch in enumerate(patches):
        found += _runtime_patch_problems(patch, f"spec.runtimePatches[{i}]")
    return found


def _runtime_patch_problems(patch: dict, path: str) -> list[str]:
    found = []
    manager = patch.get("manager") or ""
    host, slash, rest = manager.partition("/")
    if not (1 <= len(manager) <= 253 and slash and DNS1123_SUBDOMAIN.fullmatch(host)
            and DOMAIN_PREFIXED_PATH.fullmatch(rest)):
        found.append(f"{path}.manager: must be a domain-prefixed path such as example.com/name (webhook)")
    template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {})
    if set(template.get("metadata") or {}) - {"labels", "annotations"}:
        found.append(f"{path}: JobSet metadata patches may only hold labels and annotations")
    jobs = (template.get("spec") or {}).get("replicatedJobs") or []
    if len(jobs) > 100 or len({j.get("name") for j in jobs}) != len(jobs):
        found.append(f"{path}: replicatedJobs must be at most 100 with unique names")
    for job in jobs:
        where = f"{path}.replicatedJobs[{job.get('name')}]"
        if job.get("name") not in RUNTIME_CONTAINERS:
            found.append(f"{where}: the runtime has no replicated job {job.get('name')!r} (webhook)")
            continue
        job_template = job.get("template") or {}
        if set(job_template.get("metadata") or {}) - {"labels", "annotations"}:
            found.append(f"{where}: Job metadata patches may only hold labels and annotations")
        pod = (job_template.get("spec") or {}).get("template") or {}
        if set(pod.get("metadata") or {}) - {"labels", "annotations"}:
            found.append(f"{where}: pod metadata patches may only hold labels and annotations")
        found += metadata_problems(pod.get("metadata") or {}, f"{where}.metadata")
        spec = pod.get("spec") or {}
        for container in spec.get("containers") or []:
            if container.get("name") not in RUNTIME_CONTAINERS[job["name"]]:
                found.append(f"{where}: the runtime job has no container {container.get('name')!r} (webhook)")
            if container.get("name") == "node" and container.get("env"):
                found.append(f"{where}: env of the node container goes in spec.trainer.env (webhook)")
            mounts = container.get("volumeMounts") or []
            if len(mounts) > 128 or len({m.get("name") for m in mounts}) != len(mounts):
                found.append(f"{where}: volumeMounts must be at most 128 with unique names")
        for key, limit in (("volumes", 128), ("tolerations", 128), ("containers", 64), ("initContainers", 64)):
            if len(spec.get(key) or []) > limit:
                found.append(f"{where}.{key}: at most {limit}")
        if not _int(spec.get("terminationGracePeriodSeconds", 0), 0, 2**63 - 1):
            found.append(f"{where}.terminationGracePeriodSeconds: minimum 0")
        if len(spec.get("serviceAccountName") or "") > 253:
            found.append(f"{where}.serviceAccountName: at most 253 characters")
        # What the patch makes of the runtime's pod: check it like a pod (schema, rules, Restricted).
        merged = {**spec, "containers": [{"image": "runtime-image", **c} for c in spec.get("containers") or []]}
        found += core_problems({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                "template": {"spec": merged}})
        found += pod_spec_problems(merged, where) + restricted_problems(merged, where)
    return found


POLICIES = ("torch", "mpi", "jax", "xgboost", "flux")
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_CONTAINERS = {"trainer": "node", "model-initializer": "model-initializer",
                       "dataset-initializer": "dataset-initializer"}
POD_FAILURE_ACTIONS = ("FailJob", "FailIndex", "Ignore", "Count")


def runtime_problems(runtime: dict) -> list[str]:
    """A ClusterTrainingRuntime: the CRD's CEL rules, the webhook's (trainingruntime_webhook.go), and each
    replicated job as the batch/v1 Job it becomes (core schema, the API server's podFailurePolicy rules)."""
    found = []
    name = runtime["metadata"].get("name", "")
    if not DNS1123_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        found.append(f"metadata.name: must be a DNS-1123 subdomain, got {name!r}")
    spec = runtime.get("spec") or {}
    ml = spec.get("mlPolicy") or {}
    if sum(key in ml for key in POLICIES) > 1:
        found.append("spec.mlPolicy: only one of the policies can be configured (CEL)")
    if "numNodes" in ml and not _int(ml["numNodes"], 1, INT32):
        found.append("spec.mlPolicy.numNodes: minimum 1")
    jobs = ((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    for i, job in enumerate(jobs):
        where = f"spec.template.spec.replicatedJobs[{i}]"
        template = job.get("template") or {}
        pod_spec = ((template.get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = [c.get("name") for c in pod_spec.get("containers") or []]
        ancestor = ((template.get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL)
        if ancestor in ANCESTOR_CONTAINERS:
            if job.get("replicas", 1) != 1:
                found.append(f"{where}.replicas: must be 1 for a {ancestor} step (webhook)")
            if ANCESTOR_CONTAINERS[ancestor] not in containers:
                found.append(f"{where}: a {ancestor} step needs a container {ANCESTOR_CONTAINERS[ancestor]!r} (webhook)")
        found += core_problems({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "t"},
                                "spec": template.get("spec") or {}})
        found += pod_failure_policy_problems(template.get("spec") or {}, containers, f"{where}.template.spec")
        found += pod_spec_problems(pod_spec, f"{where}.template.spec.template.spec")
    return found


def pod_failure_policy_problems(job_spec: dict, containers: list[str], path: str) -> list[str]:
    """The API server's rules for a Job's podFailurePolicy (batch/v1 validation)."""
    policy = job_spec.get("podFailurePolicy")
    if policy is None:
        return []
    found = []
    if ((job_spec.get("template") or {}).get("spec") or {}).get("restartPolicy") != "Never":
        found.append(f"{path}.template.spec.restartPolicy: must be Never with a podFailurePolicy")
    rules = policy.get("rules") or []
    if len(rules) > 20:
        found.append(f"{path}.podFailurePolicy.rules: at most 20")
    for i, rule in enumerate(rules):
        where = f"{path}.podFailurePolicy.rules[{i}]"
        if rule.get("action") not in POD_FAILURE_ACTIONS:
            found.append(f"{where}.action: must be one of {', '.join(POD_FAILURE_ACTIONS)}")
        if rule.get("action") == "FailIndex" and job_spec.get("backoffLimitPerIndex") is None:
            found.append(f"{where}.action: FailIndex needs backoffLimitPerIndex")
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            found.append(f"{where}: exactly one of onExitCodes and onPodConditions")
        codes = rule.get("onExitCodes")
        if codes is not None:
            values = codes.get("values") or []
            if codes.get("operator") not in ("In", "NotIn"):
                found.append(f"{where}.onExitCodes.operator: must be In or NotIn")
            if not 1 <= len(values) <= 255 or values != sorted(set(values)):
                found.append(f"{where}.onExitCodes.values: 1 to 255 unique values in ascending order")
            if codes.get("operator") == "In" and 0 in values:
                found.append(f"{where}.onExitCodes.values: 0 is not allowed with In")
            if "containerName" in codes and codes["containerName"] not in containers:
                found.append(f"{where}.onExitCodes.containerName: no container {codes['containerName']!r}")
        for condition in rule.get("onPodConditions") or []:
            if condition.get("status", "True") not in ("True", "False", "Unknown"):
                found.append(f"{where}.onPodConditions.status: must be True, False or Unknown")
    return found


# ---------------------------------------------------------------------------------------------
# 4. The API server's syntax rules


def qualified_name(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    ok = len(name) <= 63 and bool(name) and bool(LABEL_VALUE.fullmatch(name))
    return ok and (not slash or (len(prefix) <= 253 and bool(DNS1123_SUBDOMAIN.fullmatch(prefix))))


def metadata_problems(metadata: dict, path: str) -> list[str]:
    found = []
    name = metadata.get("name")
    if name is not None and (len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name)):
        found.append(f"{path}.name: not a DNS-1123 name: {name!r}")
    namespace = metadata.get("namespace")
    if namespace is not None and (len(namespace) > 63 or not DNS1123_LABEL.fullmatch(namespace)):
        found.append(f"{path}.namespace: not a DNS-1123 label: {namespace!r}")
    for key, value in (metadata.get("labels") or {}).items():
        if not qualified_name(key) or not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            found.append(f"{path}.labels: invalid label {key!r}: {value!r}")
    annotations = metadata.get("annotations") or {}
    found += [f"{path}.annotations: invalid key {key!r}" for key in annotations if not qualified_name(key)]
    if sum(len(k.encode()) + len(str(v).encode()) for k, v in annotations.items()) > 256 * 1024:
        found.append(f"{path}.annotations: more than 256 KiB")
    return found


def configmap_problems(config_map: dict) -> list[str]:
    data = config_map.get("data") or {}
    found = [f"data: invalid key {key!r}" for key in data if not re.fullmatch(r"[-._a-zA-Z0-9]+", key)]
    found += [f"data.{key}: must be a string" for key, value in data.items() if not isinstance(value, str)]
    if sum(len(k) + len(str(v).encode()) for k, v in data.items()) > 1024 * 1024:
        found.append("data: more than 1 MiB")
    return found


def _env_problems(env: list[dict], path: str, max_items: int | None = None) -> list[str]:
    found = []
    names = [e.get("name") for e in env]
    if len(set(names)) != len(names):
        found.append(f"{path}: duplicate names {names}")
    if max_items is not None and len(env) > max_items:
        found.append(f"{path}: at most {max_items} entries")
    for var in env:
        if not ENV_NAME.fullmatch(var.get("name") or ""):
            found.append(f"{path}: invalid env var name {var.get('name')!r}")
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            if not DNS1123_SUBDOMAIN.fullmatch(ref.get("name") or "") or len(ref["name"]) > 253:
                found.append(f"{path}: {var['name']}: invalid Secret name {ref.get('name')!r}")
            if not re.fullmatch(r"[-._a-zA-Z0-9]+", ref.get("key") or ""):
                found.append(f"{path}: {var['name']}: invalid Secret key {ref.get('key')!r}")
    return found


def pod_spec_problems(spec: dict, path: str) -> list[str]:
    found = []
    volumes = spec.get("volumes") or []
    volume_names = [v.get("name") for v in volumes]
    if len(set(volume_names)) != len(volume_names):
        found.append(f"{path}.volumes: duplicate names")
    for volume in volumes:
        if not DNS1123_LABEL.fullmatch(volume.get("name") or ""):
            found.append(f"{path}.volumes: invalid name {volume.get('name')!r}")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and not DNS1123_SUBDOMAIN.fullmatch(claim):
            found.append(f"{path}.volumes: invalid claimName {claim!r}")
    for key in ("serviceAccountName", "priorityClassName"):
        if key in spec and (len(spec[key]) > 253 or not DNS1123_SUBDOMAIN.fullmatch(spec[key])):
            found.append(f"{path}.{key}: not a DNS-1123 name")
    for key, value in (spec.get("nodeSelector") or {}).items():
        if not qualified_name(key) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            found.append(f"{path}.nodeSelector: invalid {key!r}: {value!r}")
    for toleration in spec.get("tolerations") or []:
        if toleration.get("operator", "Equal") not in ("Equal", "Exists"):
            found.append(f"{path}.tolerations: invalid operator")
        if toleration.get("effect", "NoSchedule") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            found.append(f"{path}.tolerations: invalid effect")
        if "key" in toleration and not qualified_name(toleration["key"]):
            found.append(f"{path}.tolerations: invalid key {toleration['key']!r}")
        if "tolerationSeconds" in toleration and toleration.get("effect") != "NoExecute":
            found.append(f"{path}.tolerations: tolerationSeconds needs effect NoExecute")
    containers = spec.get("containers") or []
    names = [c.get("name") for c in containers]
    if len(set(names)) != len(names):
        found.append(f"{path}.containers: duplicate names")
    for container in containers:
        where = f"{path}.containers[{container.get('name')}]"
        if not DNS1123_LABEL.fullmatch(container.get("name") or ""):
            found.append(f"{where}: invalid container name")
        mounts = container.get("volumeMounts") or []
        if len({m.get("mountPath") for m in mounts}) != len(mounts):
            found.append(f"{where}.volumeMounts: duplicate mountPath")
        found += [f"{where}.volumeMounts: no volume {m.get('name')!r}" for m in mounts
                  if m.get("name") not in volume_names]
        found += _env_problems(container.get("env") or [], f"{where}.env")
        for port in container.get("ports") or []:
            if "name" in port and (len(port["name"]) > 15 or not PORT_NAME.fullmatch(port["name"])
                                   or not re.search("[a-z]", port["name"])):
                found.append(f"{where}.ports: invalid name {port['name']!r}")
            if not _int(port.get("containerPort"), 1, 65535):
                found.append(f"{where}.ports: invalid containerPort")
        for kind, quantities in (container.get("resources") or {}).items():
            found += [f"{where}.resources.{kind}.{k}: not a quantity: {v!r}" for k, v in quantities.items()
                      if not QUANTITY.match(str(v))]
    return found


# ---------------------------------------------------------------------------------------------
# 5. Restricted Pod Security Standard


def restricted_problems(spec: dict, path: str) -> list[str]:
    found = []
    pod = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            found.append(f"{path}.{host}: not allowed")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"{path}.volumes[{volume.get('name')}]: volume type {sorted(kinds)} not allowed")
    if pod.get("runAsUser") == 0:
        found.append(f"{path}.securityContext.runAsUser: 0 not allowed")
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        context = container.get("securityContext") or {}
        where = f"{path}.containers[{container.get('name')}].securityContext"
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}.allowPrivilegeEscalation: must be false")
        if context.get("privileged"):
            found.append(f"{where}.privileged: not allowed")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{where}.capabilities.drop: must include ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}.capabilities.add: only NET_BIND_SERVICE allowed")
        if not (context.get("runAsNonRoot") is True or (pod.get("runAsNonRoot") is True
                                                        and context.get("runAsNonRoot") is not False)):
            found.append(f"{where}.runAsNonRoot: must be true (pod or container)")
        if context.get("runAsUser") == 0:
            found.append(f"{where}.runAsUser: 0 not allowed")
        seccomp = (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}.seccompProfile: must be RuntimeDefault or Localhost (pod or container)")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{where}: hostPort not allowed")
    return found
