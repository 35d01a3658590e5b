"""The ``launcher`` command line: the options are parsed here, and a backend does the work.

``run`` and ``validate`` use the local backend; ``render``, ``submit``, ``status``, ``logs`` and
``cancel`` the scheduler that ``--backend`` names, through its one interface (launcher/backend.py),
with no branch per backend here. Library code raises launcher.errors' exceptions, and
``LauncherCommand`` turns them into click's: one line on stderr, exit code 2 for bad input and 1
for a failed cluster operation, never a traceback; a Ctrl-C exits 130 in every command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from launcher import __version__, appspec, errors, local, options, profiles, recipes
from launcher.appspec import AppSpec
from launcher.backend import SCHEDULERS, Notice, get, refuse_others
from launcher.checks import shown
from recipekit.errors import EXIT_INTERRUPTED

CONFIG = click.option("--config", type=click.Path(dir_okay=False), default=None,
                      help="config YAML to use instead of the recipe's config.yaml")
OVERRIDES = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                         help="override a config key (repeatable)")
# Fields no option of their own names (every other field is named by its option's flag).
FIELD_NAMES = {"output_dir": "--set output_dir", "overrides": "--set", "config": "the resolved config",
               "tolerations": "the profile's tolerations", "recipe": "RECIPE", "dry_run_server": "--dry-run"}


def flag(command: click.Command, field: str) -> str:
    """How the command line names ``field``: its option's flag (``env.NAME``: ``--env NAME``)."""
    head, dot, key = field.partition(".")
    if head in FIELD_NAMES or head.isupper():
        return FIELD_NAMES.get(head, head)
    option = next((p for p in command.params if isinstance(p, click.Option) and p.name == head), None)
    if option is None:
        return "--" + head.replace("_", "-")
    name = next(o for o in option.opts if o.startswith("--"))
    return f"{name} {key}" if dot and option.multiple else name


class Failure(click.ClickException):
    """A launcher error as click shows it: ``Error: <one line>`` and the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class LauncherCommand(click.Command):
    """A command whose launcher errors become one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except errors.RecipeNotFound as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param_hint="RECIPE") from None
        except errors.ConfigRejected as exc:  # the recipe printed its problems, one line each
            sys.stderr.write(exc.report)
            ctx.exit(exc.exit_code)
        except errors.FieldError as exc:
            raise Failure(f"{flag(self, exc.field)}: {exc.problem}", exc.exit_code) from None
        except errors.LauncherError as exc:
            raise Failure(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:  # the README's code for Ctrl-C, not click's "Aborted!" and 1
            ctx.exit(EXIT_INTERRUPTED)


class LauncherGroup(click.Group):
    command_class = LauncherCommand
    group_class = type  # subgroups are LauncherGroups too


@click.group(cls=LauncherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="launcher")
def main() -> None:
    """Fine-tuning recipes that run the same locally, on Slurm and on Kubernetes."""


@main.command("list")
def list_recipes() -> None:
    """List the recipes with a one-line description."""
    found = recipes.all_recipes()
    width = max((len(r.name) for r in found), default=0)
    for recipe in found:
        click.echo(f"{recipe.name.ljust(width)}  {recipe.description}")


@main.command()
@click.argument("recipe")
@CONFIG
@OVERRIDES
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="processes on this machine; more than 1 runs under torchrun (DDP)")
def run(recipe: str, config: str | None, overrides: tuple[str, ...], nproc: int) -> None:
    """Run RECIPE (a directory such as recipes/sft, or its name) on this machine."""
    loaded = recipes.load(recipe)
    backend = local.LocalBackend()
    app = AppSpec(loaded, loaded.name, config=config, overrides=overrides, nproc_per_node=nproc)
    sys.exit(backend.submit(backend.dryrun(app)))


@main.command()
@click.argument("recipe")
@CONFIG
@OVERRIDES
def validate(recipe: str, config: str | None, overrides: tuple[str, ...]) -> None:
    """Check RECIPE's config and data, and print the resolved config."""
    loaded = recipes.load(recipe)
    sys.exit(local.validate(AppSpec(loaded, loaded.name, config=config, overrides=overrides)))


@main.group()
def models() -> None:
    """Manage the embedded models."""


@models.command("prepare")
@click.option("--tiny", is_flag=True, help="also build the tiny random test model")
def models_prepare(tiny: bool) -> None:
    """Convert the embedded SmolLM2 GGUF into a cached HF checkpoint (idempotent)."""
    from recipekit import models as modellib

    try:
        click.echo(modellib.prepare_embedded())
        if tiny:
            click.echo(modellib.prepare_tiny())
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("try")
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", "prompts", multiple=True, help="a question to ask (repeatable); none = interactive")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
def try_model(output: str, prompts: tuple[str, ...], max_new_tokens: int) -> None:
    """Chat with a trained model: an output dir, or a model/merged dir inside it."""
    from launcher import chat

    model_dir = chat.find_model_dir(Path(output))
    if model_dir is None:
        raise click.BadParameter(f"no model found in {output} (expected merged/ or model/ inside it)",
                                 param_hint="OUTPUT")
    generate = chat.load(model_dir)
    questions = iter(prompts) if prompts else chat.read_questions()
    for question in questions:
        click.echo(f"> {question}\n{generate(question, max_new_tokens)}")


@main.command("export")
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["gguf"]), required=True,
              help="gguf: one file for llama.cpp and Ollama, with an Ollama Modelfile")
@click.option("--outtype", type=click.Choice(["f16", "bf16", "f32", "q8_0"]), default="f16", show_default=True,
              help="tensor type in the file (q8_0: 8-bit, about half the size of f16)")
def export_model(output: str, fmt: str, outtype: str) -> None:
    """Write a trained model (OUTPUT's merged/ or full-weight model/) as GGUF into OUTPUT/gguf/."""
    from launcher import export

    gguf_file, modelfile = export.to_gguf(Path(output), outtype)
    click.echo(f"{gguf_file}\n{modelfile}\nollama: ollama create NAME -f {modelfile}\n"
               f"llama.cpp: llama-cli -m {gguf_file}")


# ---------------------------------------------------------------------------------------------
# Schedulers: render / submit / status / logs / cancel (--backend slurm | k8s)

# The choices are the backends' own (tests/launcher/test_cli.py holds them equal), written out so
# that parsing the command line imports no backend.
CONTAINERS = ("none", "apptainer", "singularity", "enroot", "oci")
GPU_REQUESTS = ("gpus-per-node", "gres")
APIS = ("pytorchjob", "trainjob")
CLEAN_POD_POLICIES = ("Running", "All", "None")
K8S_OPTIONS = [
    click.option("--api", type=click.Choice(APIS), default=None,
                 help="k8s: a Kubeflow PyTorchJob (Training Operator) or a Trainer v2 TrainJob  [default: pytorchjob]"),
    click.option("--namespace", help="k8s: the namespace  [default: the kubeconfig context's]"),
    click.option("--pvc", help="k8s: PersistentVolumeClaim for outputs and checkpoints, mounted at /outputs"),
    click.option("--kueue-queue", help="k8s: Kueue LocalQueue to submit to"),
    click.option("--priority-class", help="k8s: PriorityClass of the pods"),
    click.option("--service-account", help="k8s: ServiceAccount of the pods"),
    click.option("--hf-token-secret", metavar="SECRET[:KEY]", help="k8s: Secret holding the HF token (env HF_TOKEN)"),
    click.option("--wandb-secret", metavar="SECRET[:KEY]", help="k8s: Secret holding the W&B key (env WANDB_API_KEY)"),
    click.option("--secret-env", "secret_env", multiple=True, metavar="NAME=SECRET[:KEY]",
                 help="k8s: env var NAME read from a Secret (repeatable)"),
    click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="k8s: label (repeatable)"),
    click.option("--annotation", "annotations", multiple=True, metavar="KEY=VALUE",
                 help="k8s: annotation (repeatable)"),
    click.option("--node-selector", "node_selector", multiple=True, metavar="KEY=VALUE",
                 help="k8s: node label the pods require (repeatable)"),
    click.option("--grace-period", type=int,
                 help="k8s: seconds from SIGTERM to SIGKILL, for the checkpoint  [default: 120]"),
    click.option("--ttl-seconds-after-finished", type=int,
                 help="k8s: delete the finished job after this many seconds  [default: 7 days]"),
    click.option("--clean-pod-policy", type=click.Choice(CLEAN_POD_POLICIES),
                 help="k8s: which pods to delete when the job finishes  [default: Running]"),
    click.option("--memory", help="k8s: memory request and limit of each pod, e.g. 200Gi"),
    click.option("--training-runtime",
                 help="k8s, --api trainjob: the ClusterTrainingRuntime  [default: ft-recipes-torch]"),
]
PAIR_OPTIONS = ("env", "labels", "annotations", "node_selector", "secret_env")  # NAME=VALUE, repeatable


def job_options(command):
    """The options of render and submit: the job's shape, the profile and its overrides."""
    options = [
        click.argument("recipe"),
        CONFIG,
        OVERRIDES,
        click.option("--backend", type=click.Choice(SCHEDULERS), default="slurm", show_default=True,
                     help="the cluster scheduler: Slurm, or Kubernetes with Kubeflow"),
        click.option("--profile", "profile_name", metavar="NAME",
                     help="cluster profile from launcher.yaml (default: its default_profile)"),
        click.option("--nodes", type=int, default=1, show_default=True,
                     help="nodes (torchrun --nnodes; on k8s: pods)"),
        click.option("--gpus", "gpus_per_node", type=int, default=0, show_default=True, help="GPUs per node"),
        click.option("--nproc-per-node", type=int, default=None,
                     help="processes per node  [default: --gpus, or 1 without GPUs]"),
        click.option("--workers", type=int, default=1, show_default=True,
                     help="search recipes: independent workers sharing one study (a job array; on k8s: pods)"),
        click.option("--job-name", help="job name, also the output dir's name  [default: the recipe's name; "
                                        "on k8s a DNS name plus a unique suffix]"),
        click.option("--partition", help="Slurm partition(s)"),
        click.option("--account", help="Slurm account"),
        click.option("--qos", help="Slurm QOS"),
        click.option("--time", help="time limit: MINUTES, HH:MM:SS or DAYS-HH:MM:SS (k8s: the job's deadline)"),
        click.option("--cpus-per-task", type=int, help="CPUs per node for its processes (k8s: the pods' CPU request)"),
        click.option("--container", type=click.Choice(CONTAINERS), help="Slurm: how the nodes run the code"),
        click.option("--image", help="Slurm: apptainer .sif file, enroot/pyxis image or OCI bundle directory; "
                     "k8s: container image"),
        click.option("--mount", "mounts", multiple=True, metavar="SRC[:DST]", help="Slurm: bind mount (repeatable)"),
        click.option("--workdir", help="Slurm: the dir holding recipes/ on the nodes  [default: this checkout]"),
        click.option("--venv", help="Slurm, container none: virtualenv to activate on the nodes"),
        click.option("--module", "modules", multiple=True,
                     help="Slurm, container none: module to load (repeatable)"),
        click.option("--output-root", help="Slurm: jobs write to OUTPUT_ROOT/JOB_NAME (on a shared filesystem)"),
        click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="export in the job (repeatable)"),
        click.option("--mem", help="Slurm: memory per node, e.g. 200G (0: all of it)"),
        click.option("--exclusive", is_flag=True, default=None, help="Slurm: whole nodes, shared with no other job"),
        click.option("--gpu-request", type=click.Choice(GPU_REQUESTS),
                     help="Slurm: ask for GPUs with --gpus-per-node or --gres=gpu:N  [default: gpus-per-node]"),
        click.option("--signal-lead", type=int, help="Slurm: seconds before the time limit to checkpoint and requeue"),
        click.option("--max-retries", type=int,
                     help="reruns after failures (a process killed, ranks lost), then exit 3  [default: 3]"),
        click.option("--max-continuations", type=int,
                     help="reruns after a time limit or a preemption  [default: no limit]"),
        *K8S_OPTIONS,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def pairs(key: str, items: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise errors.FieldError(key, f"expected NAME=VALUE, got {shown(item)}")
        found[name] = value
    return found


def given(values: dict) -> dict:
    """The options the command line was given (click leaves None, False or () for the others)."""
    return {key: value for key, value in values.items() if options.given(value)}


def request(recipe: str, config, overrides, backend, profile_name, nodes, gpus_per_node, nproc_per_node, workers,
            job_name, **cli):
    """The scheduler and its request (the dry run) for the command line's job."""
    loaded = recipes.load(recipe)
    scheduler = get(backend)
    refuse_others(scheduler, cli)
    cli = {key: pairs(key, value) if key in PAIR_OPTIONS else value for key, value in given(cli).items()}
    app, opts, notes = appspec.plan(scheduler, profiles.load(profile_name), loaded, cli, config=config,
                                    overrides=overrides, nodes=nodes, gpus_per_node=gpus_per_node,
                                    nproc_per_node=nproc_per_node, workers=workers, job_name=job_name)
    for note in notes:
        click.echo(note, err=True)
    return scheduler, scheduler.dryrun(app, opts)


@main.command()
@job_options
def render(**options) -> None:
    """Print the job script (Slurm) or manifests (k8s) that run RECIPE on a cluster; nothing is submitted."""
    _, dryrun = request(**options)
    click.echo(dryrun.text, nl=False)


CONTEXT = click.option("--context", help="k8s: kubeconfig context  [default: the current one]")


class DryRunCommand(LauncherCommand):
    """``--dry-run`` is a flag; ``--dry-run=server`` (kubectl's spelling) is its server-side form."""

    def parse_args(self, ctx, args):
        spelled = {"--dry-run=server": "--dry-run-server", "--dry-run=client": "--dry-run"}
        end = args.index("--") if "--" in args else len(args)
        return super().parse_args(ctx, [spelled.get(a, a) for a in args[:end]] + args[end:])


@main.command(cls=DryRunCommand)
@job_options
@click.option("--dry-run", "dry_run_client", is_flag=True,
              help="print what would be submitted and submit nothing; k8s: --dry-run=server has the API server "
                   "check the objects without creating them")
@click.option("--dry-run-server", is_flag=True, hidden=True)
@CONTEXT
def submit(dry_run_client: bool, dry_run_server: bool, context: str | None, **options) -> None:
    """Submit RECIPE to a cluster; prints the job's id or name and how to follow it."""
    connection = given({"context": context, "dry_run_server": dry_run_server})
    refuse_others(get(options["backend"]), connection)
    scheduler, dryrun = request(**options)
    if dry_run_client and not dry_run_server:
        click.echo(dryrun.text, nl=False)
        click.echo(scheduler.dry_run_summary(dryrun), err=True)
        return
    for line in scheduler.submit(dryrun, **connection):
        click.echo(line)


def manage_options(command):
    """The options of status, logs and cancel: which scheduler, and for k8s where the job is."""
    for option in reversed([
        click.argument("job"),
        click.option("--backend", type=click.Choice(SCHEDULERS), default="slurm", show_default=True,
                     help="the cluster scheduler"),
        click.option("--namespace", help="k8s: the job's namespace  [default: the kubeconfig context's]"),
        CONTEXT,
    ]):
        command = option(command)
    return command


def scheduler_for(backend: str, cli: dict):
    """The scheduler ``--backend`` names, and the options of the command it reads."""
    scheduler = get(backend)
    refuse_others(scheduler, cli)
    return scheduler, given(cli)


@main.command()
@manage_options
def status(job: str, backend: str, **cli) -> None:
    """Show a submitted job's state (Slurm: scontrol; k8s: the job's conditions and its pods)."""
    scheduler, where = scheduler_for(backend, cli)
    for line in scheduler.status(job, **where):
        click.echo(line)


@main.command()
@manage_options
@click.option("-f", "--follow", is_flag=True, help="keep printing as the log grows (Ctrl-C to stop)")
def logs(job: str, backend: str, follow: bool, **cli) -> None:
    """Print a submitted job's log (Slurm: its output file; k8s: the rank-0 pod's log)."""
    scheduler, where = scheduler_for(backend, cli)
    for chunk in scheduler.logs(job, follow=follow, **where):
        click.echo(chunk, nl=False, err=isinstance(chunk, Notice))


@main.command()
@manage_options
@click.option("--preempt", is_flag=True,
              help="Slurm: instead of cancelling, USR1, so the job checkpoints, requeues itself and resumes")
def cancel(job: str, backend: str, **cli) -> None:
    """Cancel a submitted job (k8s: delete the job, its pods and its ConfigMap; outputs stay on the PVC)."""
    scheduler, where = scheduler_for(backend, cli)
    click.echo(scheduler.cancel(job, **where))


@main.command()
@click.option("--check", is_flag=True, help="compare with the files instead of writing them (exit 1 if stale)")
@click.option("--backend", type=click.Choice(SCHEDULERS), default=None, help="only this backend's examples")
def examples(check: bool, backend: str | None) -> None:
    """Regenerate slurm/examples/ and k8s/examples/: every recipe rendered with the example profiles."""
    from launcher import examples as example_files

    stale = []
    for name, example_set in example_files.SETS.items():
        if backend in (None, name):
            stale += example_files.write(example_set, check=check)
    for path in stale:
        click.echo(f"{'stale' if check else 'wrote' if path.exists() else 'removed'}: {path}")
    if check and stale:
        raise click.ClickException("the examples are out of date: run `launcher examples`")


if __name__ == "__main__":
    main()
