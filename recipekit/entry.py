"""The command line every recipe shares: ``train.py [--config FILE] [--set key=value ...] [--check]``.

``run(main, Config)`` parses and validates the config, calls ``main(cfg)`` and turns the
outcome into the documented exit code (see ``recipekit.errors``), printing bad input as one
line per problem instead of a traceback. ``prepare`` is how every ``main`` starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from recipekit import config as configlib
from recipekit import distributed, hub, process
from recipekit.errors import (EXIT_FAILED, EXIT_INFRASTRUCTURE, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USAGE,
                              ParametersFrozen, Preempted, ReplicasDiverged, UsageError)
from recipekit.schema import ModelOptions


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error:`` line and exit 2, like every other bad input."""

    def error(self, message: str):
        report([f"{one_line(message)} (see --help)"])
        sys.exit(EXIT_USAGE)


def make_parser(description: str, default_config: Path) -> argparse.ArgumentParser:
    parser = OneLineParser(description=description)
    parser.add_argument("--config", default=str(default_config),
                        help=f"recipe config YAML (default: {default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key; repeatable; a.b=v sets a key inside a mapping")
    parser.add_argument("--check", action="store_true",
                        help="validate the config (and data) and print the resolved config, then exit")
    return parser


def report(problems: list[str]) -> None:
    rank = os.environ.get("RANK", "0")
    if rank != "0":  # under torchrun every rank validates; one copy of the message is enough
        return
    for problem in problems:
        print(f"error: {one_line(problem)}", file=sys.stderr)


def one_line(text: str) -> str:
    """Escape control characters (newlines included) so a user-supplied value cannot split a message."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def run(main: Callable[[Any, bool], None], config_cls: type, description: str, recipe_file: str,
        argv: list[str] | None = None) -> None:
    """Parse argv into ``config_cls``, run ``main(cfg, check_only)``, exit with the contract's code."""
    process.skip_garbage_collection_at_exit()
    default_config = Path(recipe_file).resolve().with_name("config.yaml")
    args = make_parser(description, default_config).parse_args(argv)
    try:
        cfg = configlib.load(config_cls, args.config, args.overrides)
        if isinstance(cfg, ModelOptions):
            process.leave_out_bitsandbytes(cfg)
        process.leave_out_deepspeed(cfg)
        if args.check:
            with stdout_to_stderr():
                main(cfg, True)
            sys.stdout.write(configlib.dump_yaml(cfg))
            return
        main(cfg, False)
    except UsageError as exc:
        report(exc.problems)
        sys.exit(EXIT_USAGE)
    except Preempted as exc:
        print(f"stopped: {exc}; exiting with {EXIT_PREEMPTED} so the scheduler retries and resumes",
              file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except (ReplicasDiverged, ParametersFrozen) as exc:
        report([str(exc)])
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - only a failure of the other ranks is mapped; anything else re-raises
        if not distributed.is_peer_failure(exc):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: rank {distributed.rank()}: lost the other ranks ({type(exc).__name__}: {one_line(text)[:300]}); "
              f"exiting with {EXIT_INFRASTRUCTURE} so the scheduler retries and resumes", file=sys.stderr)
        sys.exit(EXIT_INFRASTRUCTURE)


Data = TypeVar("Data")


def prepare(cfg: Any, load: Callable[[Any, str | None], Data]) -> tuple[str | None, Data]:
    """The start of every recipe's ``main``: logging, the Hub token (by reference), the recipe's data
    (``load`` reads and checks it), then whether the Hub can be reached where the model or push_to_hub
    needs it. Returns the token and the data."""
    process.setup_logging()
    token = hub.token(cfg)
    data = load(cfg, token)
    hub.check_reachable(cfg, token)
    return token, data


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (by Python or by native code, at the file descriptor) to
    stderr: a check's stdout is the resolved config alone, which the launcher ships to the job."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
