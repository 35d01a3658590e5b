"""torchrun that exits with the recipe's exit code: the command of the training pods on Kubernetes.

    python -m launcher.k8s_torchrun recipes/<name>/train.py --config /etc/ft-recipes/config.yaml

takes exactly torchrun's arguments and, like ``torchrun``, its rendezvous from the PET_* env the
operator sets (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT).
Two things differ, both for ``restartPolicy: ExitCode`` (1-127 fail the job, 128-255 retry it):

- torchrun exits 1 whenever a worker fails. Here the pod exits with the code of the first worker
  that failed: 2 for a bad config, 143 after a preemption, 128 + N for a worker killed by signal N.
- On SIGTERM (pod deleted, preempted, evicted) torchrun would stop its workers itself and kill
  them after 30 s. Here SIGTERM and SIGUSR1 go straight to the workers, which save a checkpoint
  at the next step and exit 143 within the pod's grace period.

It is a keeper process (PID 1 in the container) around one child that runs torchrun's own code,
``torch.distributed.run``, and reports the first failure's exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys

from launcher.signals import forwarded

AGENT = "--agent"


def exit_code(code: int) -> int:
    """A process's exit status as a shell reports it: killed by signal N -> 128 + N."""
    if code < 0:
        return 128 - code
    return code if 0 <= code <= 255 else 1


def agent(argv: list[str]) -> int:
    """Run torchrun in this process; return the first failed worker's exit code (0 if none failed)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = exit_code(failure.exitcode)
        print(f"k8s_torchrun: worker rank {rank} exited with {code}; the pod exits with it", file=sys.stderr)
        return code or 1
    except SignalException as exc:  # a signal reached torchrun itself, before any worker had started
        return 128 + int(exc.sigval)
    return 0


def keeper(argv: list[str]) -> int:
    """Start the agent, send stop signals to its workers, exit with its code."""
    proc = subprocess.Popen([sys.executable, "-m", "launcher.k8s_torchrun", AGENT, *argv])
    with forwarded(proc, to_workers=True):
        code = exit_code(proc.wait())
    reap_orphans()
    return code


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
