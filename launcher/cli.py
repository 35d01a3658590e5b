"""The ``launcher`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from launcher import __version__, jobspec, local, profiles, recipes

CONFIG = click.option("--config", type=click.Path(dir_okay=False), default=None,
                      help="config YAML to use instead of the recipe's config.yaml")
OVERRIDES = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                         help="override a config key (repeatable)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    sys.exit(local.run(recipes.load(recipe), config, overrides, nproc))


@main.command()
@click.argument("recipe")
@CONFIG
@OVERRIDES
def validate(recipe: str, config: str | None, overrides: tuple[str, ...]) -> None:
    """Check RECIPE's config and data, and print the resolved config."""
    loaded = recipes.load(recipe)
    code = subprocess.run([sys.executable, *local.recipe_args(loaded, config, overrides), "--check"]).returncode
    sys.exit(code)


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


# ---------------------------------------------------------------------------------------------
# Cluster backends: render / submit / status / logs / cancel (--backend slurm | k8s)

BACKENDS = ("slurm", "k8s")


class BadInput(click.ClickException):
    """Bad input: one line on stderr, exit code 2 (like a recipe's config errors)."""

    exit_code = 2


OPTION_NAMES = {"gpus_per_node": "--gpus", "output_dir": "--set output_dir", "config": "the resolved config",
                "profile": "--profile", "overrides": "--set", "labels": "--label", "annotations": "--annotation",
                "node_selector": "--node-selector", "secret_env": "--secret-env", "job_name": "--job-name",
                "tolerations": "the profile's tolerations", "cpu": "--cpus-per-task", "mounts": "--mount",
                "modules": "--module"}


def option_name(field: str) -> str:
    head, dot, key = field.partition(".")
    if dot and head in ("env", "labels", "annotations", "node_selector", "secret_env"):
        return f"{OPTION_NAMES.get(head, '--' + head)} {key}"
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def bad_field(exc: jobspec.FieldError) -> BadInput:
    return BadInput(f"{option_name(exc.field)}: {exc.problem}")


K8S_OPTIONS = [
    click.option("--api", type=click.Choice(["pytorchjob", "trainjob"]), default=None,
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
    click.option("--backoff-limit", type=int, help="k8s: pod restarts before the job fails  [default: 3]"),
    click.option("--ttl-seconds-after-finished", type=int,
                 help="k8s: delete the finished job after this many seconds  [default: 7 days]"),
    click.option("--clean-pod-policy", type=click.Choice(["Running", "All", "None"]),
                 help="k8s: which pods to delete when the job finishes  [default: Running]"),
    click.option("--memory", help="k8s: memory request and limit of each pod, e.g. 200Gi"),
    click.option("--training-runtime",
                 help="k8s, --api trainjob: the ClusterTrainingRuntime  [default: torch-distributed]"),
]
PAIR_OPTIONS = ("env", "labels", "annotations", "node_selector", "secret_env")  # NAME=VALUE, repeatable


def job_options(command):
    """The options of render and submit: the job's shape, the profile and its overrides."""
    options = [
        click.argument("recipe"),
        CONFIG,
        OVERRIDES,
        click.option("--backend", type=click.Choice(BACKENDS), default="slurm", show_default=True,
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
        click.option("--container", type=click.Choice(jobspec.CONTAINERS), help="Slurm: how the nodes run the code"),
        click.option("--image", help="Slurm: apptainer .sif file, or enroot/pyxis image; k8s: container image"),
        click.option("--mount", "mounts", multiple=True, metavar="SRC[:DST]", help="Slurm: bind mount (repeatable)"),
        click.option("--workdir", help="Slurm: the dir holding recipes/ on the nodes  [default: this checkout]"),
        click.option("--venv", help="Slurm, container none: virtualenv to activate on the nodes"),
        click.option("--module", "modules", multiple=True,
                     help="Slurm, container none: module to load (repeatable)"),
        click.option("--output-root", help="Slurm: jobs write to OUTPUT_ROOT/JOB_NAME (on a shared filesystem)"),
        click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="export in the job (repeatable)"),
        click.option("--signal-lead", type=int, help="Slurm: seconds before the time limit to checkpoint and requeue"),
        click.option("--max-retries", type=int, help="Slurm: requeues after a preemption or a killed node"),
        *K8S_OPTIONS,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def pairs(option: str, items: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"{option}: expected NAME=VALUE, got {jobspec.shown(item)}")
        found[key] = value
    return found


def backend_options(backend: str, options: dict) -> dict:
    """The profile overrides for ``backend``; an option of the other backend is an error."""
    other = profiles.K8S_KEYS + ("api",) if backend == "slurm" else profiles.SLURM_KEYS
    for key in other:
        if options.get(key) not in (None, (), {}):
            raise BadInput(f"{option_name(key)}: only used with --backend {'k8s' if backend == 'slurm' else 'slurm'}")
    values = {key: value for key, value in options.items() if key not in other}
    for key in PAIR_OPTIONS:
        if key in values:
            values[key] = pairs(option_name(key), values[key])
    return values


def build_job(recipe: str, config, overrides, backend, profile_name, nodes, gpus_per_node, nproc_per_node,
              workers, job_name, **options):
    """The backend's typed job (a JobSpec for Slurm, a K8sJob for Kubernetes) from the command line."""
    loaded = recipes.load(recipe)
    values = backend_options(backend, options)
    api = values.pop("api", None)
    try:
        profile = profiles.override(profiles.load(profile_name), values)
        if backend == "k8s":
            from launcher import k8s

            if loaded.entry.name == "search.py" and nodes > 1 and workers == 1:
                click.echo(f"note: {loaded.name} is a search recipe: --nodes {nodes} runs {nodes} worker pods "
                           f"sharing one study (as --workers {nodes}); each worker is one process", err=True)
            return k8s.build(loaded, profile, config=config, overrides=overrides, nodes=nodes,
                             gpus_per_node=gpus_per_node, nproc_per_node=nproc_per_node, workers=workers,
                             job_name_base=job_name, api=api or "pytorchjob")
        return jobspec.build(loaded, profile, config=config, overrides=overrides, nodes=nodes,
                             gpus_per_node=gpus_per_node, nproc_per_node=nproc_per_node, workers=workers,
                             job_name=job_name)
    except profiles.ProfileError as exc:
        raise BadInput(str(exc)) from None
    except jobspec.FieldError as exc:
        raise bad_field(exc) from None


def render_job(job) -> str:
    from launcher import k8s, slurm

    return k8s.render(job) if isinstance(job, k8s.K8sJob) else slurm.render(job)


@main.command()
@job_options
def render(**options) -> None:
    """Print the job script (Slurm) or manifests (k8s) that run RECIPE on a cluster; nothing is submitted."""
    click.echo(render_job(build_job(**options)), nl=False)


CONTEXT = click.option("--context", help="k8s: kubeconfig context  [default: the current one]")


class DryRunCommand(click.Command):
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
    dry_run = "server" if dry_run_server else "client" if dry_run_client else None
    if options["backend"] == "k8s":
        return submit_k8s(build_job(**options), dry_run, context)
    if context is not None:
        raise BadInput("--context: only used with --backend k8s")
    if dry_run == "server":
        raise BadInput("--dry-run: server is only for --backend k8s; use --dry-run")
    from launcher import slurm

    spec = build_job(**options)
    script = slurm.render(spec)
    if dry_run:
        click.echo(script, nl=False)
        click.echo(f"dry run: would write {spec.job_dir}/{slurm.SCRIPT_NAME} and run "
                   f"sbatch --parsable {spec.job_dir}/{slurm.SCRIPT_NAME}", err=True)
        return
    try:
        job_id = slurm.submit(spec, script)
    except slurm.SlurmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"submitted job {job_id} ({spec.job_name})")
    click.echo(f"log:     {slurm.submitted_log(spec, job_id)}")
    click.echo(f"outputs: {spec.job_dir}")
    click.echo(f"follow:  launcher logs {job_id} --follow   (status: launcher status {job_id}, "
               f"cancel: launcher cancel {job_id})")


def submit_k8s(job, dry_run: str | None, context: str | None) -> None:
    from launcher import k8s

    if dry_run == "client":
        click.echo(k8s.render(job), nl=False)
        click.echo(f"dry run: would create ConfigMap {job.config_map} and {job.kind} {job.name} "
                   f"(in namespace {job.namespace or 'of the kubeconfig context'})", err=True)
        return
    try:
        cluster = k8s.connect(job.namespace, context)
        k8s.submit(job, cluster, dry_run=dry_run == "server")
    except k8s.K8sError as exc:
        raise click.ClickException(str(exc)) from None
    where = f"-n {cluster.namespace}"
    if dry_run:
        click.echo(f"dry run (server): the API server accepted ConfigMap {job.config_map} and {job.kind} {job.name} "
                   f"in namespace {cluster.namespace}; nothing was created")
        return
    click.echo(f"submitted {job.kind} {job.name} in namespace {cluster.namespace}")
    click.echo(f"outputs: {job.spec.job_dir} on PVC {job.pvc}")
    click.echo(f"follow:  launcher logs {job.name} --backend k8s {where} --follow   (status: launcher status "
               f"{job.name} --backend k8s {where}, cancel: launcher cancel {job.name} --backend k8s {where})")


def manage_options(command):
    """The options of status, logs and cancel: which scheduler, and for k8s where the job is."""
    for option in reversed([
        click.argument("job"),
        click.option("--backend", type=click.Choice(BACKENDS), default="slurm", show_default=True,
                     help="the cluster scheduler"),
        click.option("--namespace", help="k8s: the job's namespace  [default: the kubeconfig context's]"),
        CONTEXT,
    ]):
        command = option(command)
    return command


def checked_job_id(job: str) -> str:
    from launcher import slurm

    if not slurm.JOB_ID.fullmatch(job):
        raise BadInput(f"JOB: expected a Slurm job id such as 1234 or 1234_5, got {jobspec.shown(job)}")
    return job


def k8s_cluster(job: str, namespace: str | None, context: str | None):
    """The connection for a k8s job named ``job`` (checked first, so a bad name never reaches the API)."""
    from launcher import k8s, k8s_fields

    try:
        k8s_fields.check_job_name("JOB", job, 63)
        if namespace is not None:
            k8s_fields.check_dns1123_label("--namespace", namespace)
    except jobspec.FieldError as exc:
        raise BadInput(str(exc)) from None
    try:
        return k8s.connect(namespace, context)
    except k8s.K8sError as exc:
        raise click.ClickException(str(exc)) from None


def slurm_only(backend: str, namespace: str | None, context: str | None) -> None:
    for name, value in (("--namespace", namespace), ("--context", context)):
        if value is not None:
            raise BadInput(f"{name}: only used with --backend k8s")


@main.command()
@manage_options
def status(job: str, backend: str, namespace: str | None, context: str | None) -> None:
    """Show a submitted job's state (Slurm: scontrol; k8s: the job's conditions and its pods)."""
    if backend == "k8s":
        from launcher import k8s

        cluster = k8s_cluster(job, namespace, context)
        try:
            for line in k8s.status(cluster, job):
                click.echo(line)
        except k8s.K8sError as exc:
            raise click.ClickException(str(exc)) from None
        return
    slurm_only(backend, namespace, context)
    from launcher import slurm

    job = checked_job_id(job)
    try:
        states = slurm.show(job)
        logs = slurm.log_files(job)
    except slurm.SlurmError as exc:
        raise click.ClickException(str(exc)) from None
    if not states:
        record = slurm.recorded(job)
        if record is None:
            raise BadInput(f"JOB: Slurm does not know job {job}, and it was not submitted from here")
        click.echo(f"job {job} ({record['name']}): no longer known to Slurm (finished; see its log)")
    for state in states:
        click.echo(state.summary())
    for log in logs:
        click.echo(f"log: {log}")


@main.command()
@manage_options
@click.option("-f", "--follow", is_flag=True, help="keep printing as the log grows (Ctrl-C to stop)")
def logs(job: str, backend: str, namespace: str | None, context: str | None, follow: bool) -> None:
    """Print a submitted job's log (Slurm: its output file; k8s: the rank-0 pod's log)."""
    if backend == "k8s":
        from launcher import k8s

        cluster = k8s_cluster(job, namespace, context)
        try:
            for chunk in k8s.logs(cluster, job, follow=follow):
                click.echo(chunk, nl=False)
        except k8s.K8sError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            sys.exit(130)
        return
    slurm_only(backend, namespace, context)
    from launcher import slurm

    job = checked_job_id(job)
    try:
        files = slurm.log_files(job)
    except slurm.SlurmError as exc:
        raise click.ClickException(str(exc)) from None
    if not files:
        raise BadInput(f"JOB: Slurm does not know job {job}, and it was not submitted from here")
    if follow:
        try:
            sys.exit(subprocess.run(["tail", "-n", "+1", "-F", *files]).returncode)
        except KeyboardInterrupt:
            sys.exit(130)
    for path in files:
        if len(files) > 1:
            click.echo(f"==> {path} <==")
        try:
            click.echo(Path(path).read_text(encoding="utf-8", errors="replace"), nl=False)
        except FileNotFoundError:
            click.echo(f"(no log yet at {path}: the job has not started)", err=True)


@main.command()
@manage_options
@click.option("--preempt", is_flag=True,
              help="Slurm: instead of cancelling, USR1, so the job checkpoints, requeues itself and resumes")
def cancel(job: str, backend: str, namespace: str | None, context: str | None, preempt: bool) -> None:
    """Cancel a submitted job (k8s: delete the job, its pods and its ConfigMap; outputs stay on the PVC)."""
    if backend == "k8s":
        from launcher import k8s

        if preempt:
            raise BadInput("--preempt: only used with --backend slurm (on Kubernetes, `kubectl delete pod` of one "
                           "of the job's pods makes it checkpoint and restart)")
        cluster = k8s_cluster(job, namespace, context)
        try:
            kind = k8s.cancel(cluster, job)
        except k8s.K8sError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"deleted {kind} {job} and ConfigMap {job}-config in namespace {cluster.namespace}")
        return
    slurm_only(backend, namespace, context)
    from launcher import slurm

    job = checked_job_id(job)
    try:
        if preempt:
            slurm.command("scancel", "--signal=USR1", "--batch", job)
        else:
            slurm.cancel(job)
    except slurm.SlurmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'sent USR1 to' if preempt else 'cancelled'} job {job}")


@main.command()
@click.option("--check", is_flag=True, help="compare with the files instead of writing them (exit 1 if stale)")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="only this backend's examples")
def examples(check: bool, backend: str | None) -> None:
    """Regenerate slurm/examples/ and k8s/examples/: every recipe rendered with the example profiles."""
    from launcher import k8s_examples, slurm_examples

    stale = []
    try:
        for name, module in (("slurm", slurm_examples), ("k8s", k8s_examples)):
            if backend in (None, name):
                stale += module.write(check=check)
    except (profiles.ProfileError, jobspec.FieldError) as exc:
        raise BadInput(str(exc)) from None
    for path in stale:
        click.echo(f"{'stale' if check else 'wrote' if path.exists() else 'removed'}: {path}")
    if check and stale:
        raise click.ClickException("the examples are out of date: run `launcher examples`")


if __name__ == "__main__":
    main()
