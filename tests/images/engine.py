"""podman for the tests that run the built image (``make test-images``), and the workaround some VMs need.

Some virtual machines (this project's development machines among them) refuse to set
RLIMIT_NPROC or RLIMIT_NOFILE inside a new container: runc fails with "error setting rlimit ...
operation not permitted", for ``podman run``, ``podman build`` and ``podman kube play`` alike.
When a probe container fails that way, and only then, these tests run podman with a
CONTAINERS_CONF whose OCI runtime is a shim that removes those two limits from the container's
config.json before handing it to runc. This lives here, in the test harness: the image, the
Dockerfile and images/build.sh know nothing of it, and on an ordinary machine it is not used.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tests.images.dockerfile import REPO

PROBE_IMAGE = "localhost/ft-recipes-test-probe:1"
SHIM = '''#!/usr/bin/env python3
"""OCI runtime shim: drop RLIMIT_NPROC and RLIMIT_NOFILE from the bundle's config.json, then run runc."""
import json, os, sys

args = sys.argv[1:]
for flag in ("--bundle", "-b"):
    if flag in args:
        path = os.path.join(args[args.index(flag) + 1], "config.json")
        with open(path) as f:
            config = json.load(f)
        process = config.get("process", {})
        process["rlimits"] = [r for r in process.get("rlimits", []) if r.get("type") not in ("RLIMIT_NPROC", "RLIMIT_NOFILE")]
        with open(path, "w") as f:
            json.dump(config, f)
os.execv(RUNC, [RUNC, *args])
'''


def missing() -> str | None:
    """Why the image tests cannot run here, or None."""
    absent = [tool for tool in ("podman", "mmdebstrap", "runc") if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install podman buildah runc catatonit mmdebstrap)"
    if os.geteuid() != 0:
        return "the image tests run podman as root"
    return None


def _probe_image() -> None:
    """A one-file image holding /bin/true and the libraries it loads (the smallest thing that can run)."""
    if subprocess.run(["podman", "image", "exists", PROBE_IMAGE]).returncode == 0:
        return
    true = Path(shutil.which("true")).resolve()
    libraries = [line.split("=>")[-1].split("(")[0].strip() for line in
                 subprocess.run(["ldd", str(true)], capture_output=True, text=True).stdout.splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "probe.tar"
        with tarfile.open(archive, "w") as tar:
            for path in [str(true), *(lib for lib in libraries if lib.startswith("/"))]:
                tar.add(Path(path).resolve(), arcname=path.lstrip("/"))
            tar.add(str(true), arcname="true")
        subprocess.run(["podman", "import", "--quiet", str(archive), PROBE_IMAGE], check=True,
                       capture_output=True)


@functools.cache
def environment() -> dict[str, str]:
    """Extra environment for podman on this machine: {} normally, CONTAINERS_CONF with the shim where needed."""
    _probe_image()
    probe = subprocess.run(["podman", "run", "--rm", "--network", "none", PROBE_IMAGE, "/true"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        return {}
    if "rlimit" not in probe.stderr:
        raise RuntimeError(f"podman cannot run a container here: {probe.stderr.strip()}")
    folder = Path(tempfile.mkdtemp(prefix="ft-recipes-oci-shim-"))
    atexit.register(shutil.rmtree, folder, True)  # the shim serves every podman call of this process
    shim = folder / "runc"
    shim.write_text(SHIM.replace("RUNC", json.dumps(shutil.which("runc"))))
    shim.chmod(0o755)
    conf = folder / "containers.conf"
    conf.write_text(f'[engine]\nruntime = "shim"\n[engine.runtimes]\nshim = [{json.dumps(str(shim))}]\n')
    return {"CONTAINERS_CONF": str(conf)}


def oci_runtime() -> str:
    """The OCI runtime command for Slurm's oci.conf: runc, or the shim next to the CONTAINERS_CONF where needed."""
    conf = environment().get("CONTAINERS_CONF")
    return str(Path(conf).with_name("runc")) if conf else shutil.which("runc")


def podman(*args: str, check: bool = True, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """``podman ARGS`` with this machine's environment, output captured as text."""
    result = subprocess.run(["podman", *args], env={**os.environ, **environment()}, capture_output=True,
                            text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def image_id(reference: str) -> str | None:
    found = podman("image", "inspect", reference, "--format", "{{.Id}}", check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def build_cpu_image() -> str:
    """``images/build.sh cpu`` (make images' script), reusing the engine's layer cache; returns the tag.

    Each build from a new checkout adds a copy of the venv (~3 GB) under a new image; the image the
    tag pointed at before is removed afterwards, with the untagged layers only it used, so that
    repeated runs do not fill the disk. The layer cache the new build used stays.
    """
    from launcher import images

    tag = images.default_image("cpu")
    previous = image_id(tag)
    result = subprocess.run(["bash", str(REPO / "images" / "build.sh"), "cpu"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, **environment()}, timeout=3600)
    assert result.returncode == 0, f"images/build.sh cpu failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    if previous and previous != image_id(tag):
        podman("rmi", previous, check=False)  # still in use by a container: kept
    return tag


def require_free_space(gigabytes: float) -> None:
    """Fail at once, saying where, when podman's storage or the temporary directory has too little space
    (a full disk otherwise shows up as unrelated podman errors in later tests)."""
    graph_root = podman("info", "--format", "{{.Store.GraphRoot}}").stdout.strip()
    for place in (graph_root, tempfile.gettempdir()):
        free = shutil.disk_usage(place).free / 2**30
        assert free >= gigabytes, (f"{place} has {free:.1f} GiB free; the image tests need about {gigabytes:g} GiB "
                                   f"(the image, a copy of it as a Slurm bundle): free some (podman image prune)")
