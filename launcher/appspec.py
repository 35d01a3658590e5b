"""The job, independent of the scheduler: ``AppSpec``, and ``plan`` that builds one from the command line.

``plan`` reads the values once, in this order: the backend's options and the job's env and image
from the profile and the command line (each value checked where it comes in: launcher/options.py),
the job's shape, then the backend names the job and places its outputs (``Scheduler.place``, which
checks what only that backend needs). Only then does the recipe's own ``--check`` run (the slow
part), and the resolved config it prints completes the AppSpec. The backend's ``dryrun`` turns
AppSpec and options into the request it would submit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

from launcher import options
from launcher.checks import check_env, check_int, check_name, no_nul, optional_string
from launcher.errors import FieldError
from launcher.options import option
from launcher.recipes import SEARCH_ENTRY, Recipe, resolve_config

if TYPE_CHECKING:
    from launcher.backend import Scheduler
    from launcher.profiles import Profile


@dataclass(frozen=True)
class AppOptions:
    """What a profile and the command line give the job itself, whatever runs it."""

    env: dict[str, str] = option({}, check=check_env, merge=True)  # exported in the job
    image: str | None = option(None, check=optional_string)         # the container image (each backend's kind)


@dataclass(frozen=True)
class AppSpec:
    """One recipe job: what runs, on how many nodes and processes, with which config and env.

    Built by ``plan`` (which checks every value once); a backend reads it and never changes it.
    """

    recipe: Recipe
    job_name: str
    output_dir: str | None = None     # the recipe's output_dir: outputs, checkpoints, resolved config, logs
    nodes: int = 1
    nproc_per_node: int = 1           # processes per node (= GPUs per node on GPUs)
    gpus_per_node: int = 0
    workers: int = 1                  # a search recipe: that many independent workers
    env: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    profile: str = "default"          # the profile's name, for the record
    config: str | None = None         # --config: the config file (default: the recipe's config.yaml)
    overrides: tuple[str, ...] = ()   # --set KEY=VALUE, then output_dir=<output_dir> when the backend chose it
    config_text: str | None = None    # the resolved config: the recipe's own --check output

    @property
    def is_search(self) -> bool:
        return self.recipe.is_search

    @property
    def entry(self) -> str:
        """The entry point relative to the job's working directory: recipes/<name>/train.py."""
        return self.recipe.entry_in_workdir


class Plan(NamedTuple):
    app: AppSpec
    opts: Any                # the backend's options (SlurmOptions, K8sOptions)
    notes: list[str]         # what the user should know about how the backend reads the request


def override_key(item: str) -> str:
    return item.partition("=")[0].strip()


def plan(backend: Scheduler, profile: Profile, recipe: Recipe, cli: Mapping[str, Any] | None = None, *,
         config: str | None = None, overrides: tuple[str, ...] = (), nodes: int = 1, gpus_per_node: int = 0,
         nproc_per_node: int | None = None, workers: int = 1, job_name: str | None = None,
         resolve: Callable[[Recipe, str | None, tuple[str, ...]], str] | None = None) -> Plan:
    """The checked AppSpec and backend options that run ``recipe`` (FieldError on bad input).

    ``cli`` holds the command line's options by key (None or empty: not given); they override the
    profile's. ``--set output_dir=DIR`` names the job's output dir; otherwise the backend places it
    and the config gets ``output_dir`` set to it. ``resolve`` stands in for the recipe's --check
    (default: ``recipes.resolve_config``).
    """
    opts = options.build(backend.Options, profile.settings, cli)
    shared = options.build(AppOptions, profile.settings, cli)
    check_name("recipe", recipe.name)
    for item in overrides:
        no_nul("overrides", item)
    given = [item.partition("=")[2] for item in overrides if override_key(item) == "output_dir"]
    draft = AppSpec(recipe=recipe, job_name=no_nul("job_name", job_name) if job_name is not None else recipe.name,
                    output_dir=given[-1] if given else None, nodes=check_int("nodes", nodes, 1, 10000),
                    gpus_per_node=check_int("gpus_per_node", gpus_per_node, 0, 64),
                    nproc_per_node=check_int("nproc_per_node", nproc_per_node if nproc_per_node is not None
                                             else max(1, gpus_per_node), 1, 1024),
                    workers=check_int("workers", workers, 1, 10000), env=shared.env, image=shared.image,
                    profile=profile.name, config=config, overrides=tuple(overrides))
    if draft.gpus_per_node and draft.nproc_per_node > draft.gpus_per_node:
        raise FieldError("nproc_per_node", f"{draft.nproc_per_node} processes per node need a GPU each, and --gpus "
                                           f"gives {draft.gpus_per_node}: set --nproc-per-node {draft.gpus_per_node} "
                                           f"or --gpus {draft.nproc_per_node}")
    app, notes = backend.place(draft, opts)
    if app.gpus_per_node > app.nproc_per_node and not app.is_search:
        notes = [*notes, f"{app.gpus_per_node - app.nproc_per_node} of the {app.gpus_per_node} GPUs per node stay "
                         f"idle: one process drives one GPU (--nproc-per-node {app.nproc_per_node})"]
    if app.is_search and app.nodes != 1:
        raise FieldError("nodes", "a search recipe's workers run on one node each; use --workers for more")
    if not app.is_search and app.workers != 1:
        raise FieldError("workers", f"only search recipes ({SEARCH_ENTRY}) run as several workers, not {recipe.name}")
    if not given:
        app = dataclasses.replace(app, overrides=(*app.overrides, f"output_dir={app.output_dir}"))
    config_text = (resolve or resolve_config)(recipe, config, app.overrides)
    return Plan(dataclasses.replace(app, config_text=config_text), opts, notes)


def check_config_text(text: Any) -> str:
    """The resolved config as a job receives it: text ending with a newline."""
    text = no_nul("config", text)
    if not text.endswith("\n"):
        raise FieldError("config", "the resolved config must end with a newline")
    return text
