"""What images/Dockerfile puts into each image, read from its text (no engine can build it here).

``parse`` splits the Dockerfile into stages of instructions; ``Image`` models what a final stage
holds: the paths that exist in it, which of them uid 1000 can write, its environment, its
user, and the programs on its PATH. The tests compare that model with the lock file and with
what the Slurm and k8s templates expect of the image.
"""

from __future__ import annotations

import functools
import importlib.metadata
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "Dockerfile"
IGNORE_FILE = REPO / "images" / "Dockerfile.dockerignore"
FINAL_STAGES = {"cuda": "cuda-build", "cpu": "cpu-build"}  # image target -> the stage that builds its venv
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Instruction:
    keyword: str
    text: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.text, comments=False)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str]:
        """ARG defaults declared in this stage."""
        found = {}
        for instruction in self.all("ARG"):
            name, _, default = instruction.text.partition("=")
            found[name.strip()] = shlex.split(default)[0] if default else ""
        return found

    def env(self) -> dict[str, str]:
        """ENV of this stage; a ``$NAME`` of a variable the base image sets stays as written."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in instruction.words():
                key, _, value = pair.partition("=")
                env[key] = VARIABLE.sub(lambda m: env.get(m[1] or m[2], m[0]), value)
        return env

    def workdir(self) -> str:
        workdirs = self.all("WORKDIR")
        return workdirs[-1].text.strip() if workdirs else "/"

    def runs(self) -> list[list[str]]:
        """Every simple command of every RUN, as words (leading VAR=value assignments dropped); a call of
        images/install.sh is replaced by the commands of its step."""
        commands = []
        for instruction in self.all("RUN"):
            for words in simple_commands(instruction.text):
                if words[0] == INSTALL_SCRIPT_IN_IMAGE:
                    commands += install_step(words[1], words[2:])
                else:
                    commands.append(words)
        return commands


def simple_commands(text: str) -> list[list[str]]:
    """A shell command line's simple commands, as words (leading VAR=value assignments dropped)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, words = [], []
    for word in [*lexer, ";"]:
        if word not in ("&&", "||", ";", "|"):
            words.append(word)
            continue
        while words and re.fullmatch(r"\w+=.*", words[0]):
            words.pop(0)
        if words:
            commands.append(words)
        words = []
    return commands


INSTALL_SCRIPT = REPO / "images" / "install.sh"
INSTALL_SCRIPT_IN_IMAGE = "images/install.sh"  # run from the WORKDIR, which holds images/


@functools.cache
def install_steps() -> dict[str, tuple[str, ...]]:
    """images/install.sh's steps: the command lines of each ``name)`` branch of its ``case``."""
    steps: dict[str, list[str]] = {}
    current = None
    for _, line in logical_lines(INSTALL_SCRIPT.read_text(encoding="utf-8")):
        if match := re.fullmatch(r"(\w+)\)", line):
            current = steps.setdefault(match[1], [])
        elif line == ";;":
            current = None
        elif current is not None:
            current.append(line)
    return {name: tuple(lines) for name, lines in steps.items()}


def install_step(step: str, args: list[str]) -> list[list[str]]:
    """The commands ``images/install.sh STEP ARGS`` runs, its positional parameters filled in."""
    assert step in install_steps(), f"images/install.sh has no step {step!r}"
    commands = []
    for line in install_steps()[step]:
        line = line.replace('"$@"', " ".join(shlex.quote(a) for a in args))
        line = re.sub(r"\$(\d)", lambda m: args[int(m[1]) - 1] if int(m[1]) <= len(args) else "", line)
        commands += simple_commands(line)
    return commands


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text) with continuations joined and comment lines dropped."""
    found, current, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction is not part of it
        if not current:
            start = number
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        found.append((start, current + line))
        current = ""
    return found


def parse(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The stages by name; a FROM's base is the default of the global ARG it names, if it names one."""
    stages: dict[str, Stage] = {}
    stage = None
    global_args: dict[str, str] = {}
    for number, line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            stage = stages[name] = Stage(name, expand(words[0], global_args))
            continue
        if stage is None and keyword == "ARG":
            arg, _, default = rest.partition("=")
            global_args[arg.strip()] = default.strip()
            continue
        assert stage is not None, f"{path}:{number}: {keyword} before the first FROM"
        stage.instructions.append(Instruction(keyword, rest.strip(), number))
    return stages


# ---------------------------------------------------------------------------------------------
# pip commands


@dataclass
class PipInstall:
    words: list[str]
    flags: set[str]
    requirements: list[str]   # -r files
    constraints: list[str]    # -c files
    editable: list[str]       # -e targets
    index_url: str | None
    extra_index_urls: list[str]
    packages: list[str]       # positional requirement specifiers


OPTIONS_WITH_VALUE = {"-r": "requirements", "--requirement": "requirements", "-c": "constraints",
                      "--constraint": "constraints", "-e": "editable", "--editable": "editable",
                      "-i": "index_url", "--index-url": "index_url", "--extra-index-url": "extra_index_urls"}


def pip_installs(stage: Stage) -> list[PipInstall]:
    found = []
    for words in stage.runs():
        if words[:2] == ["pip", "install"]:
            rest = words[2:]
        elif words[:4] == ["python", "-m", "pip", "install"]:
            rest = words[4:]
        else:
            continue
        values: dict[str, list[str]] = {name: [] for name in set(OPTIONS_WITH_VALUE.values())}
        flags, packages = set(), []
        items = iter(rest)
        for word in items:
            option, eq, value = word.partition("=")
            if option in OPTIONS_WITH_VALUE:
                values[OPTIONS_WITH_VALUE[option]].append(value if eq else next(items))
            elif word.startswith("-"):
                flags.add(word)
            else:
                packages.append(word)
        found.append(PipInstall(words, flags, values["requirements"], values["constraints"], values["editable"],
                                values["index_url"][-1] if values["index_url"] else None,
                                values["extra_index_urls"], packages))
    return found


def expand(text: str, variables: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: variables.get(m[1] or m[2], m[0]), text)


# ---------------------------------------------------------------------------------------------
# The build context: what images/Dockerfile.dockerignore lets COPY see


@functools.cache
def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(is an exception "!", pattern) in order; Docker's rule: the last matching pattern wins."""
    patterns = []
    for line in IGNORE_FILE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = posixpath.normpath(line.lstrip("!"))
        regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
                        for part in re.split(r"(\*\*|\*)", glob))
        patterns.append((negated, re.compile(regex.replace(".*/", "(.*/)?"))))
    return patterns


def in_context(relative: str) -> bool:
    """Whether a repository file reaches the build (a pattern matching a parent dir counts too)."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for negated, pattern in ignore_patterns():
        if any(pattern.fullmatch(c) for c in candidates):
            included = negated
    return included


def context_files(source: str) -> list[str]:
    """The repository files a COPY source names that reach the build, relative to the repo."""
    path = REPO / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [rel for rel in (p.relative_to(REPO).as_posix() for p in files) if in_context(rel)]


# ---------------------------------------------------------------------------------------------
# A final image as a whole


def lock_distributions() -> list[importlib.metadata.Distribution]:
    """The lock's packages, as installed in this venv (the same lock the images install)."""
    names = [line.split("==")[0] for line in (REPO / "requirements.lock").read_text().splitlines()
             if line and not line.startswith("#")]
    return [importlib.metadata.distribution(name) for name in names]


def venv_programs() -> set[str]:
    """What the lock and the project put into the venv's bin/: console scripts and script files."""
    programs = {"python", "python3", "python3.11", "pip", "pip3", "activate"}
    for dist in lock_distributions():
        programs |= {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
        programs |= {PurePosixPath(f).name for f in dist.files or () if PurePosixPath(f).parts[:4] == ("..", "..", "..", "bin")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    programs |= set(project.get("scripts", {}))
    return programs


@dataclass
class Image:
    target: str
    stage: Stage
    build: Stage
    workdir: str
    env: dict[str, str]
    user: str
    paths: set[str]       # absolute paths that exist in the image (files and directories)
    writable: set[str]    # directories uid 1000 owns
    programs: set[str]    # names a command resolves through PATH

    def exists(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return path in self.paths

    def can_write(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.writable)

    def resolve(self, program: str) -> bool:
        if program.startswith("/"):
            return self.exists(program)
        return program in self.programs


def with_parents(paths: set[str]) -> set[str]:
    found = set()
    for path in paths:
        pure = PurePosixPath(path)
        found |= {str(p) for p in (pure, *pure.parents)}
    return found


def copied_paths(stage: Stage) -> set[str]:
    """Paths the stage's COPY instructions from the build context create."""
    paths, workdir = set(), "/"
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.text.strip()
        if instruction.keyword != "COPY" or "--from" in instruction.text:
            continue
        *sources, dest = [w for w in instruction.words() if not w.startswith("--")]
        into_dir = dest.endswith("/") or len(sources) > 1
        dest = posixpath.normpath(posixpath.join(workdir, dest))
        for source in sources:
            if (REPO / source).is_dir():
                for rel in context_files(source):
                    paths.add(posixpath.join(dest, str(PurePosixPath(rel).relative_to(source.rstrip("/")))))
            elif context_files(source):
                paths.add(posixpath.join(dest, PurePosixPath(source).name) if into_dir else dest)
    return paths


def image(target: str) -> Image:
    stages = parse()
    stage, build = stages[target], stages[FINAL_STAGES[target]]
    env = stage.env()
    venv = env.get("VIRTUAL_ENV", "")
    paths = {stage.workdir(), *copied_paths(stage)}
    for instruction in stage.all("COPY"):
        words = instruction.words()
        if f"--from={build.name}" in words:
            *_, source, dest = words
            assert source == dest, "the venv must stay at the path it was built at"
            paths |= {p for p in copied_paths(build) if p.startswith(source)}
            paths |= {build.workdir(), build.env().get("VIRTUAL_ENV", "")}
    writable = set()
    for words in stage.runs():
        if words[:2] == ["mkdir", "-p"]:
            paths |= set(words[2:])
        if words[:2] == ["ln", "-s"]:
            paths.add(words[3])
        if words[:1] == ["chown"] and words[1] == "1000:1000":
            writable |= set(words[2:])
        if words[0] == "useradd" and "--create-home" in words:
            home = words[words.index("--home-dir") + 1]
            paths.add(home)
            writable.add(home)
    programs = set()
    if venv and env.get("PATH", "").startswith(f"{venv}/bin:"):
        programs |= venv_programs()
        paths |= {f"{venv}/bin/{name}" for name in programs}
    shells = [json_word for i in stage.all("SHELL") for json_word in re.findall(r'"([^"]+)"', i.text)[:1]]
    programs |= {PurePosixPath(shell).name for shell in shells} | {"sh"}
    paths |= set(shells)
    users = stage.all("USER")
    return Image(target, stage, build, stage.workdir(), env, users[-1].text.strip() if users else "root",
                 with_parents(paths), writable, programs)
