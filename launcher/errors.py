"""The launcher's exceptions. Library code raises these; only launcher/cli.py turns them into exit
codes and messages (one line, never a traceback).

- ``BadInput`` (exit code 2): the user's input is wrong: a value (``FieldError``, which names the
  field; the command line names it by its option), a recipe (``RecipeNotFound``) or a profile file
  (``ProfileError``).
- ``ConfigRejected`` (the recipe's own exit code): the recipe's ``--check`` refused the config and
  printed why, one line a problem.
- ``BackendError`` (exit code 1): a scheduler could not do what was asked (a missing tool, a
  cluster that refused or could not be reached).
"""

from __future__ import annotations


class LauncherError(Exception):
    """A problem the user has to know about, in one line."""

    exit_code = 1


class BadInput(LauncherError):
    """Bad input: exit code 2, like a recipe's config errors."""

    exit_code = 2


class FieldError(BadInput, ValueError):
    """A bad value, reported as ``<field>: <problem>`` on one line."""

    def __init__(self, name: str, problem: str):
        self.field = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class RecipeNotFound(BadInput):
    """RECIPE names no recipe directory."""


class ProfileError(BadInput, ValueError):
    """A problem in a launcher.yaml, as one line naming the file, the profile and the key."""


class ConfigRejected(LauncherError):
    """The recipe's ``--check`` refused the config; ``report`` is what it printed on stderr."""

    def __init__(self, report: str, exit_code: int):
        self.report = report
        self.exit_code = exit_code
        super().__init__(report.strip().splitlines()[-1] if report.strip() else f"exit code {exit_code}")


class BackendError(LauncherError):
    """A scheduler operation failed; the message is one line that says what to do."""
