"""The keeper: torchrun with one exit-code contract, the command of every training node on Slurm and Kubernetes.

    python -m launcher.keeper recipes/<name>/train.py --config FILE

takes torchrun's own arguments and, like torchrun, reads the rendezvous from the PET_* env where
the Kubeflow controllers set it. It runs torchrun's code (``torch.distributed.run``) in a child
process and exits with the one code a scheduler needs to decide (README.md, "Exit codes"):

- 0 finished; 1 a bug (a worker's traceback is in the log); 2 invalid config or data; 3 the job's
  retry budget is spent (below): none of these is retried;
- 143 stopped by SIGTERM/SIGUSR1 after a complete checkpoint; 170 the rendezvous, the store or
  another rank failed; 128 + N a process was killed by signal N (137: SIGKILL, the OOM killer):
  all retried, and the rerun resumes from the newest complete checkpoint.

Signals: SIGTERM and SIGUSR1 sent to the keeper go to the workers, which save a checkpoint at the
next step and exit 143. The torchrun agent runs with both ignored and is told to handle neither
(``--signals-to-handle``), so a signal sent to every process of a node (Slurm's preemption) never
makes the agent kill its workers before their checkpoint. Once the workers have ended, the keeper
ignores both: a signal repeated until the node's step ends (Slurm's job script does that) must not
turn their 143 into the keeper's own death by signal.

Attempts: with FT_JOB_DIR (the job's output directory, on shared storage) and FT_MAX_RETRIES in
the env, as the rendered jobs set them, every keeper first checks that it can write the job's
directory (if not: exit 2, naming FT_OUTPUTS_PVC and the fix), then refuses to start once the job
has failed more than FT_MAX_RETRIES times (recorded in ``<job dir>/attempts.log``, see
launcher/attempts.py); with FT_RECORD_ATTEMPTS=1 (Kubernetes, where no other process sees the
whole job) the keeper of node 0 also records that its attempt started and how it ended. On Slurm
the batch script records them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from launcher import attempts
from launcher.signals import forwarded
from recipekit.errors import EXIT_FAILED, EXIT_INFRASTRUCTURE, EXIT_PREEMPTED, EXIT_RETRIES_USED, EXIT_USAGE

AGENT = "--agent"
QUIET_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # the workers', not the agent's


def exit_code(code: int) -> int:
    """A process's exit status as a shell reports it: killed by signal N -> 128 + N."""
    if code < 0:
        return 128 - code
    return code if 0 <= code <= 255 else EXIT_FAILED


def first_failure(failures: dict) -> tuple[int, int]:
    """(rank, exit code) of the failure that explains the others: a worker killed by a signal, if any
    (the others then fail talking to it), else the first to fail."""
    killed = [(rank, f) for rank, f in failures.items() if f.exitcode < 0]
    rank, failure = min(killed or failures.items(), key=lambda item: item[1].timestamp)
    return rank, exit_code(failure.exitcode)


def agent(argv: list[str]) -> int:
    """Run torchrun in this process; the contract's code of how its workers ended."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(["--signals-to-handle", "SIGINT,SIGHUP,SIGQUIT", *store_host(argv)]))
    except ChildFailedError as exc:
        rank, code = first_failure(exc.failures)
        why = describe(code)
        print(f"keeper: worker rank {rank} exited with {code} ({why}); the node exits with it", file=sys.stderr)
        return code or EXIT_FAILED
    except SignalException as exc:  # a signal the agent handles (SIGINT, SIGHUP, SIGQUIT)
        return 128 + int(exc.sigval)
    except (RendezvousError, ConnectionError, TimeoutError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"keeper: the rendezvous or the store failed ({type(exc).__name__}: {text[:300]}); "
              f"exiting with {EXIT_INFRASTRUCTURE}, which is retried", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    return 0


def store_host(argv: list[str]) -> list[str]:
    """With a c10d rendezvous on Slurm, node 0 hosts the store: torchrun's own guess compares the
    endpoint with the node's hostname, which need not match the address Slurm knows the node by."""
    node = os.environ.get("SLURM_NODEID")
    if node is None or "c10d" not in argv or any("is_host" in arg for arg in argv):
        return argv
    return ["--rdzv_conf", f"is_host={int(node == '0')}", *argv]


def describe(code: int) -> str:
    """Why a node ended with ``code``, in a few words, and whether it is retried."""
    if code == EXIT_PREEMPTED:
        return "stopped by a signal after a checkpoint; retried"
    if code == EXIT_INFRASTRUCTURE:
        return "lost the other ranks, the rendezvous or the store; retried"
    if code > 128:
        name = signal.Signals(code - 128).name if code - 128 in signal.valid_signals() else f"signal {code - 128}"
        return f"killed by {name}; retried"
    return {0: "finished", 1: "a bug, see the traceback above; not retried",
            2: "invalid config or data; not retried", EXIT_RETRIES_USED: "retry budget spent; not retried"}.get(
        code, "not retried")


def ignore_quiet_signals() -> None:
    for sig in QUIET_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def keeper(argv: list[str]) -> int:
    """Check the retry budget, run the agent with stop signals going to its workers, record and exit."""
    record = attempts.from_env()
    recording = record is not None and record.records and node_rank() == 0
    if record is not None:
        if (unwritable := outputs_unwritable(record.job_dir)):
            return refuse(unwritable, EXIT_USAGE)
        if (spent := record.budget_spent()):
            return refuse(spent, EXIT_RETRIES_USED)
        if recording:
            record.start()
    proc = subprocess.Popen([sys.executable, "-m", "launcher.keeper", AGENT, *argv], preexec_fn=ignore_quiet_signals)
    # Before its workers start, the agent (deaf to SIGTERM/SIGUSR1) is stopped with SIGINT: nothing to checkpoint.
    # Once it has ended, a stop signal (Slurm's job script repeats one until the step ends) has nothing left to
    # stop, and is ignored: it must not end this process by signal (138 for SIGUSR1) in place of the workers' code.
    with forwarded(proc, to_workers=True, before_workers=signal.SIGINT, afterwards=signal.SIG_IGN) as received:
        code = exit_code(proc.wait())
    reap_orphans()
    if received and code == 128 + signal.SIGINT:
        code = EXIT_PREEMPTED  # stopped before training: rerun it
    if recording:
        record.add(code, describe(code))
        if (spent := record.budget_spent()) and attempts.kind(code) == "failure":
            return refuse(spent, EXIT_RETRIES_USED)
    return code


def refuse(why: str, code: int) -> int:
    """Say in one line why the node ends with the permanent ``code``, and return it."""
    print(f"keeper: {why}; exiting with {code}, which is not retried", file=sys.stderr)
    return code


def outputs_unwritable(job_dir: Path) -> str | None:
    """Why this process cannot write the job's output directory, naming the volume and the fix; or None."""
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=job_dir, prefix=".write-test-"):
            return None
    except OSError as exc:
        volume = os.environ.get("FT_OUTPUTS_PVC")
        where = f"PVC {volume} (mounted at {job_dir.parent})" if volume else str(job_dir.parent)
        return (f"cannot write {job_dir} ({exc.strerror or exc}): make {where} writable by uid {os.getuid()} "
                f"gid {os.getgid()}, e.g. a StorageClass that honours fsGroup, or chown the volume to "
                f"{os.getuid()}:{os.getgid()} once")


def node_rank() -> int:
    for name in ("PET_NODE_RANK", "SLURM_NODEID", "GROUP_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def reap_orphans() -> None:
    """As PID 1, collect workers that outlived the agent, so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [AGENT]:
        return agent(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    return keeper(argv)


if __name__ == "__main__":
    sys.exit(main())
