"""Unpack an image into an OCI bundle for Slurm's own container support (``srun --container``).

    python images/oci_bundle.py ghcr.io/ft-recipes/ft-recipes:0.1.0-cpu /shared/bundles/ft-recipes \\
        --mount /shared

The bundle is a directory holding ``rootfs/`` (the image's filesystem, read-only when run) and
``config.json`` (the OCI runtime config) with the image's user, environment and working
directory, a private ``/tmp``, and a bind mount of every ``--mount`` path at the same place: the
shared filesystem that holds the jobs' output root must be one of them, and the job directories
must be writable by the bundle's user (the image's, uid 1000, or ``--user``). As Apptainer does, the
processes keep the node's network, hostname and process ids (torchrun's rendezvous tells the
nodes apart by hostname and process id, and reaches them over the node's network), and see
the node's /etc/hosts and /etc/resolv.conf. Point a Slurm profile at it with
``container: oci`` and ``image: <bundle dir>``; the cluster's oci.conf names the runtime
(runc or crun) that runs it (slurm/README.md).

Needs podman or docker to read the image; writes nothing outside the bundle directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READ_ONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def engine() -> str:
    for name in ("podman", "docker"):
        if shutil.which(name):
            return name
    sys.exit("oci_bundle: needs podman or docker to read the image")


def image_config(tool: str, image: str) -> dict:
    inspected = subprocess.run([tool, "image", "inspect", image], capture_output=True, text=True)
    if inspected.returncode != 0:
        sys.exit(f"oci_bundle: {tool} cannot find image {image!r}: {inspected.stderr.strip()}")
    return json.loads(inspected.stdout)[0].get("Config") or {}


def unpack(tool: str, image: str, rootfs: Path) -> None:
    container = subprocess.run([tool, "create", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        with subprocess.Popen([tool, "export", container], stdout=subprocess.PIPE) as export:
            with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
                # As exported: modes (a sticky /tmp), owners by number; the archive is the engine's own.
                tar.extractall(rootfs, numeric_owner=True, filter="fully_trusted")
        if export.returncode != 0:
            sys.exit(f"oci_bundle: {tool} export failed")
    finally:
        subprocess.run([tool, "rm", container], capture_output=True)


def user_ids(user: str) -> tuple[int, int]:
    uid, _, gid = (user or "0").partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        sys.exit(f"oci_bundle: the image's USER must be numeric (uid[:gid]), got {user!r}")
    return int(uid), int(gid or uid)


def runtime_config(config: dict, mounts: list[str], user: str | None = None) -> dict:
    uid, gid = user_ids(user or config.get("User", ""))
    env = config.get("Env") or []
    hf_home = next((item.split("=", 1)[1] for item in env if item.startswith("HF_HOME=")), None)
    binds = [{"destination": path, "type": "bind", "source": path, "options": ["rbind", "rw"]} for path in mounts]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": config.get("Cmd") or ["/bin/sh"],
            "env": env,
            "cwd": config.get("WorkingDir") or "/",
            "noNewPrivileges": True,
            "capabilities": {kind: [] for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")},
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            # The datasets cache: a private scratch, as the root filesystem is read-only.
            *([{"destination": hf_home, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", f"uid={uid}", f"gid={gid}"]}] if hf_home else []),
            *({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}
              for path in ("/etc/hosts", "/etc/resolv.conf") if Path(path).is_file()),
            *binds,  # after /tmp, so that a shared path under /tmp is not hidden by it
        ],
        "linux": {
            "namespaces": [{"type": "mount"}],  # the node's network, hostname and process ids
            "maskedPaths": MASKED,
            "readonlyPaths": READ_ONLY,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Unpack an image into an OCI bundle for srun --container.")
    parser.add_argument("image", help="the image, as podman or docker name it")
    parser.add_argument("bundle", type=Path, help="the bundle directory to write (must not exist)")
    parser.add_argument("--mount", action="append", default=[], metavar="PATH",
                        help="host path bind-mounted at the same place (repeatable): the shared filesystem")
    parser.add_argument("--user", metavar="UID[:GID]",
                        help="run as this user instead of the image's (e.g. the cluster user who owns the job dirs)")
    args = parser.parse_args(argv)
    mounts = [str(Path(path).resolve()) for path in args.mount]
    if args.bundle.exists():
        sys.exit(f"oci_bundle: {args.bundle} exists; choose a new directory")
    tool = engine()
    config = image_config(tool, args.image)
    (args.bundle / "rootfs").mkdir(parents=True)
    unpack(tool, args.image, args.bundle / "rootfs")
    (args.bundle / "config.json").write_text(json.dumps(runtime_config(config, mounts, args.user), indent=2) + "\n")
    print(f"wrote the bundle {args.bundle} (mounts: {', '.join(mounts) or 'none'})")


if __name__ == "__main__":
    main()
