"""launcher/k8s_client.py: submit / status / logs / cancel against a stand-in for the Kubernetes API server.

No API server can run here. `FakeApiServer` stands in for one: a small HTTP server on the
loopback interface that serves exactly the REST paths the launcher's `kubernetes` client calls
(API discovery, PersistentVolumeClaims, ConfigMaps, PyTorchJobs, pods and pod logs), answers
with the status codes and Status bodies a real API server sends (201 Created, 409 AlreadyExists,
403 Forbidden, 404 for an API group whose CRD is not installed), and records every request. The
launcher reaches it through an ordinary kubeconfig, so the client, its authentication header and
its serialization are the real ones; only the server is a stand-in. It does not validate the
objects (tests/k8s/test_manifests.py does that).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from click.testing import CliRunner

from launcher import appspec, cli, k8s, k8s_client, profiles, recipes
from launcher.k8s_client import K8sError

NAMESPACE = "ml"
TOKEN = "test-token-123"
CANARY = "hf_canary_5ecret_t0ken_value"


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


FORBIDDEN = (403, status_body(403, "Forbidden", 'configmaps is forbidden: User "alice" cannot create resource '
                              f'"configmaps" in API group "" in the namespace "{NAMESPACE}"', {"kind": "configmaps"}))
NO_SUCH_API = (404, status_body(404, "NotFound", "the server could not find the requested resource"))
DISCOVERY = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "kubeflow.org/v1", "resources": [
    {"name": "pytorchjobs", "singularName": "pytorchjob", "namespaced": True, "kind": "PyTorchJob",
     "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}]}


class FakeApiServer:
    """A loopback HTTP server answering like the Kubernetes API server; see the module docstring."""

    def __init__(self):
        self.requests: list[dict] = []
        self.overrides: dict[tuple[str, str], tuple[int, object]] = {}  # (method, path) -> (status, body)
        self.objects: dict[str, dict] = {}  # path of each created object -> the object
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests if method in (None, r["method"])]

    def respond(self, method: str, path: str, body: dict | None) -> tuple[int, object]:
        if (method, path) in self.overrides:
            return self.overrides[(method, path)]
        if method == "GET" and path == "/apis/kubeflow.org/v1":
            return 200, DISCOVERY
        if method == "GET" and re.fullmatch(r"/api/v1/namespaces/[^/]+/persistentvolumeclaims/[^/]+", path):
            return 200, {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                         "metadata": {"name": path.rsplit("/", 1)[1]}, "spec": {}}
        if method == "POST":
            created = json.loads(json.dumps(body))
            created["metadata"]["uid"] = f"uid-{len(self.objects)}"
            self.objects[f"{path}/{created['metadata']['name']}"] = created
            return 201, created
        if method in ("GET", "PATCH", "DELETE") and path in self.objects:
            found = self.objects[path]
            if method == "DELETE":
                del self.objects[path]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
            return 200, found
        return 404, status_body(404, "NotFound", f'"{path.rsplit("/", 1)[-1]}" not found',
                                {"name": path.rsplit("/", 1)[-1]})

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                server.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                        "body": body, "auth": self.headers.get("Authorization"),
                                        "content_type": self.headers.get("Content-Type")})
                status, answer = server.respond(self.command, url.path, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api(tmp_path, monkeypatch):
    """A running stand-in API server and a kubeconfig (context namespace ml) that points at it."""
    with FakeApiServer() as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
            "users": [{"name": "alice", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "alice", "namespace": NAMESPACE}}],
        }))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield server


@pytest.fixture(scope="module")
def rendered() -> k8s.K8sRequest:
    """One rendered job, built once (planning runs the recipe's --check)."""
    backend = k8s.K8sBackend(suffix=lambda base: "t3st1")
    app, opts, _ = appspec.plan(backend, profiles.Profile(settings={"hf_token_secret": "hf-token"}),
                                recipes.load("sft-zero2"), nodes=2, gpus_per_node=4)
    return backend.dryrun(app, opts)


@pytest.fixture
def job(rendered) -> k8s.K8sJob:
    return rendered.job


def submit(rendered: k8s.K8sRequest, dry_run: bool = False) -> dict:
    return k8s_client.submit(k8s_client.connect(), rendered.objects, rendered.job.opts.pvc, dry_run=dry_run)


def launcher(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli.main, list(args), env=env, catch_exceptions=False)


def test_submit_creates_the_configmap_then_the_job_and_makes_the_job_own_it(api):
    result = launcher("submit", "recipes/sft-zero2", "--backend", "k8s", "--nodes", "2", "--gpus", "4",
                      "--hf-token-secret", "hf-token", "--set", "use_auth_token=HF_TOKEN", env={"HF_TOKEN": CANARY})
    assert result.exit_code == 0, result.output
    created = api.calls("POST")
    assert [path for _, path in created] == [f"/api/v1/namespaces/{NAMESPACE}/configmaps",
                                             f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs"]
    assert api.calls()[:2] == [("GET", "/apis/kubeflow.org/v1"),  # the CRD is installed
                               ("GET", f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/ft-recipes-outputs")]
    config_map, job = (r["body"] for r in api.requests if r["method"] == "POST")
    name = job["metadata"]["name"]
    assert re.fullmatch(r"sft-zero2-[a-z0-9]{5}", name) and config_map["metadata"]["name"] == f"{name}-config"
    assert job["metadata"]["namespace"] == config_map["metadata"]["namespace"] == NAMESPACE
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in api.requests)
    assert CANARY not in json.dumps(api.requests)  # the token stays where it is: in the Secret
    (patch,) = [r for r in api.requests if r["method"] == "PATCH"]
    assert patch["path"] == f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}-config"
    assert patch["body"]["metadata"]["ownerReferences"] == [
        {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name, "uid": "uid-1"}]
    assert f"submitted PyTorchJob {name} in namespace {NAMESPACE}" in result.output
    assert f"launcher logs {name} --backend k8s -n {NAMESPACE} --follow" in result.output


def test_server_side_dry_run_creates_nothing(api, rendered):
    submit(rendered, dry_run=True)
    posts = [r for r in api.requests if r["method"] == "POST"]
    assert len(posts) == 2 and all(r["query"] == {"dryRun": ["All"]} for r in posts)
    assert api.calls("PATCH") == []


def test_client_side_dry_run_prints_the_manifests_and_sends_nothing(api):
    result = CliRunner().invoke(
        cli.main, ["submit", "recipes/sft-zero2", "--backend", "k8s", "--namespace", "ml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert [obj["kind"] for obj in k8s.manifests(result.stdout)] == ["ConfigMap", "PyTorchJob"]
    assert "dry run: would create ConfigMap" in result.stderr and api.requests == []


def test_already_exists_is_reported_and_the_new_configmap_is_removed(api, job, rendered):
    path = f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs"
    api.overrides[("POST", path)] = (409, status_body(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{job.name}" '
                                                      "already exists", {"name": job.name, "kind": "pytorchjobs"}))
    with pytest.raises(K8sError) as error:
        submit(rendered)
    message = str(error.value)
    assert message.startswith(f"creating PyTorchJob {job.name}: it already exists in namespace {NAMESPACE}")
    assert "already exists" in message and "\n" not in message
    assert ("DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{job.config_map}") in api.calls()


def test_forbidden_says_it_is_rbac_and_names_the_namespace(api, job, rendered):
    api.overrides[("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps")] = FORBIDDEN
    result = launcher("cancel", job.name, "--backend", "k8s")  # nothing to cancel: a 404, the job is not found
    assert result.exit_code == 1 and f"no PyTorchJob, TrainJob or Job named {job.name}" in result.output
    with pytest.raises(K8sError) as error:
        submit(rendered)
    message = str(error.value)
    assert f"forbidden by RBAC in namespace {NAMESPACE}" in message and "k8s/README.md, section RBAC" in message
    assert 'User "alice" cannot create resource "configmaps"' in message
    assert api.calls("POST") == [("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps")]  # no job without config


def test_a_missing_crd_says_the_training_operator_is_not_installed(api, rendered):
    api.overrides[("GET", "/apis/kubeflow.org/v1")] = NO_SUCH_API
    result = launcher("submit", "recipes/sft-zero2", "--backend", "k8s")
    assert result.exit_code == 1
    assert "the Kubeflow Training Operator is not installed" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert api.calls("POST") == []
    # Discovery hidden from the user: the create itself answers 404 for the API group.
    api.overrides[("GET", "/apis/kubeflow.org/v1")] = FORBIDDEN
    api.overrides[("POST", f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs")] = NO_SUCH_API
    with pytest.raises(K8sError, match="Training Operator is not installed"):
        submit(rendered)


def test_a_missing_pvc_is_reported_before_anything_is_created(api, rendered):
    api.overrides[("GET", f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/ft-recipes-outputs")] = (
        404, status_body(404, "NotFound", 'persistentvolumeclaims "ft-recipes-outputs" not found',
                         {"name": "ft-recipes-outputs", "kind": "persistentvolumeclaims"}))
    with pytest.raises(K8sError, match=f"no PersistentVolumeClaim ft-recipes-outputs in namespace {NAMESPACE}"):
        submit(rendered)
    assert api.calls("POST") == []


def test_status_logs_and_cancel(api, job, rendered):
    submit(rendered)
    path = f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs/{job.name}"
    api.objects[path]["status"] = {"conditions": [
        {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "job is running"}]}
    pod = {"metadata": {"name": f"{job.name}-master-0", "creationTimestamp": "2025-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "pytorch"}], "nodeName": "gpu-node-1"},
           "status": {"phase": "Running", "containerStatuses": [
               {"name": "pytorch", "restartCount": 1, "ready": True, "image": "i", "imageID": "",
                "state": {"running": {}}}]}}
    api.overrides[("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")] = (
        200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]})
    api.overrides[("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{job.name}-master-0/log")] = (
        200, "step 1 loss 10.4\nstep 2 loss 9.8\n")

    status = launcher("status", job.name, "--backend", "k8s")
    assert status.exit_code == 0, status.output
    assert status.output.splitlines()[0] == f"PyTorchJob {job.name} (namespace {NAMESPACE}): Running"
    assert f"pod {job.name}-master-0: Running, restarts 1 on gpu-node-1" in status.output
    (pods_query,) = [r["query"] for r in api.requests if r["path"].endswith("/pods")]
    assert pods_query["labelSelector"] == [f"training.kubeflow.org/job-name={job.name}"]

    logs = launcher("logs", job.name, "--backend", "k8s")
    assert logs.exit_code == 0 and logs.output == "step 1 loss 10.4\nstep 2 loss 9.8\n"
    (log_query,) = [r["query"] for r in api.requests if r["path"].endswith("/log")]
    assert log_query["container"] == ["pytorch"]

    cancel = launcher("cancel", job.name, "--backend", "k8s")
    assert cancel.exit_code == 0, cancel.output
    assert api.calls("DELETE") == [("DELETE", path),
                                   ("DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{job.config_map}")]
    assert api.objects == {}


def test_bad_names_never_reach_the_api_server(api):
    for args in (["status", "Bad_Name"], ["logs", "x" * 64], ["cancel", "ok", "--namespace", "Not/A/Namespace"]):
        result = launcher(*args, "--backend", "k8s")
        assert result.exit_code == 2 and "DNS-1" in result.output, result.output
    assert api.requests == []


def test_no_kubeconfig_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = launcher("status", "some-job", "--backend", "k8s")
    assert result.exit_code == 1 and result.output.startswith("Error: no Kubernetes credentials")
    assert result.output.count("\n") == 1
