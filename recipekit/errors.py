"""Exit codes shared by every recipe, and the errors that map to them.

Schedulers decide whether to retry from the exit code alone, so the codes follow the
Kubeflow ``restartPolicy: ExitCode`` convention: 1-127 are permanent, 128-255 are retried.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error (traceback printed): permanent, a retry would fail the same way
EXIT_USAGE = 2  # invalid config or data: permanent, fix the input
EXIT_RETRIES_USED = 3  # infrastructure kept failing until the job's retry budget was spent: permanent
EXIT_PREEMPTED = 143  # stopped by SIGTERM/SIGUSR1 after saving a checkpoint: retry, it resumes (128 + SIGTERM)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_INFRASTRUCTURE = 170  # another rank, the rendezvous or the communication backend failed: retry, it resumes


class UsageError(Exception):
    """Bad config or data: reported as one line per problem, exit 2, never retried."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(UsageError):
    """A dataset that cannot be used as configured."""


class Preempted(Exception):
    """Training stopped on a signal after saving a complete checkpoint."""


class ReplicasDiverged(Exception):
    """Data-parallel ranks hold different weights: a bug, reported in one line, exit 1 (never retried)."""


class ParametersFrozen(Exception):
    """A trainable parameter group did not move in the step that should have moved it: a bug, reported in one
    line, exit 1 (never retried)."""
