"""Hostile values never escape the job script: generated cases (hypothesis), ~1100 in all.

Every user value that reaches slurm/job.sbatch.j2 is either validated (the #SBATCH block, where
nothing can be quoted) or shell-quoted. For generated values full of newlines, quotes, `$()`,
backticks, `;`, `#` and `%`, these tests check that

- a value is either refused with a FieldError naming its field, or the rendered script passes
  `bash -n` and its #SBATCH block holds exactly the expected options with the validated values
  (each case goes the way of `launcher render`, through `appspec.plan` and the backend's dry run,
  with a stand-in for the recipe's `--check` that returns the generated config);
- running the script against stub Slurm/torchrun/apptainer commands that record their argv and
  environment, every value arrives literally, and the config file equals the resolved config;
- on the command line, a bad value is one line on stderr, exit 2, naming the option.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from launcher import appspec, cli, recipes, slurm
from launcher.errors import FieldError
from launcher.profiles import Profile

NASTY = ["\n", "\r", "'", '"', "$", "(", ")", "`", ";", "&", "|", "\\", "#", "%", " ", "\t", "*", "?", "~",
         "{", "}", "<", ">", "!", "=", ",", ":", "-", "/", ".", "é", "\u2028", "\x1b", "\x00"]
SNIPPETS = ["$(touch pwned)", "`touch pwned`", "; touch pwned", "\n#SBATCH --wrap=x\ntouch pwned",
            "'; touch pwned; '", '"; touch pwned; "', "${PATH}", "\nFT_RECIPES_CONFIG\n", "%j", "--", ""]
hostile = st.one_of(
    st.text(alphabet=st.sampled_from(NASTY + list("abcXYZ019_")), max_size=24),
    st.lists(st.sampled_from(SNIPPETS + NASTY), max_size=4).map("".join),
    st.text(max_size=16),
)
safe_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
maybe_hostile = st.one_of(st.none(), hostile, safe_name)
BACKEND = slurm.SlurmBackend()
FIELDS = {"job_name", "partition", "account", "qos", "time", "cpus_per_task", "container", "image", "mounts", "modules",
          "venv", "env", "signal_lead", "workdir", "output_dir", "nodes", "gpus_per_node", "nproc_per_node",
          "workers", "config", "overrides", "recipe"}


def config_text(values: dict) -> str:
    """A resolved config as a recipe's --check prints it (recipekit.config.dump_yaml)."""
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=100)


@st.composite
def jobs(draw, job_dir: str = "/shared/out/sft"):
    """(the job's shape, its command-line options, the resolved config)."""
    container = draw(st.sampled_from(slurm.CONTAINERS))
    job = dict(recipe="sft", job_name=draw(st.one_of(safe_name, hostile)), overrides=(f"output_dir={job_dir}",),
               nodes=draw(st.integers(1, 4)), gpus_per_node=draw(st.integers(0, 8)),
               nproc_per_node=draw(st.integers(1, 8)))
    options = dict(
        workdir="/shared/src",
        partition=draw(maybe_hostile), account=draw(maybe_hostile), qos=draw(maybe_hostile),
        time=draw(st.one_of(st.none(), st.sampled_from(["30", "04:00:00", "1-00:00:00", "10:00"]), hostile)),
        cpus_per_task=draw(st.one_of(st.none(), st.integers(1, 64))),
        container=container,
        image=draw(hostile.filter(bool)) if container != "none" else None,
        mounts=tuple(draw(st.lists(hostile, max_size=3))) if container != "oci" else (),  # oci: the bundle's
        modules=tuple(draw(st.lists(hostile, max_size=2))) if container == "none" else (),
        env=draw(st.dictionaries(st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), hostile),
                                 hostile, max_size=3)),
        signal_lead=draw(st.integers(1, 120)),
    )
    if draw(st.booleans()):
        options["workdir"] = draw(hostile)
    text = config_text(draw(st.dictionaries(hostile, st.one_of(hostile, st.integers(), st.none()), min_size=1,
                                            max_size=4)))
    return job, options, text


def dryrun(job: dict, options: dict, text: str) -> slurm.SlurmRequest:
    job = dict(job)
    app, opts, _ = appspec.plan(BACKEND, Profile(), recipes.load(job.pop("recipe")), options,
                                resolve=lambda *args: text, **job)
    return BACKEND.dryrun(app, opts)


def sbatch_block(script: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first line that is not blank or a comment."""
    found = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            found.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    return found


def expected_block(job: slurm.SlurmRequest) -> list[str]:
    app, opts = job.app, job.opts
    lines = [f"--job-name={app.job_name}", f"--nodes={app.nodes}", "--ntasks-per-node=1"]
    if app.gpus_per_node:
        lines.append(f"--gpus-per-node={app.gpus_per_node}")
    if opts.cpus_per_task:
        lines.append(f"--cpus-per-task={opts.cpus_per_task}")
    if opts.time:
        lines.append(f"--time={opts.time}")
    lines += [f"--{name}={getattr(opts, name)}" for name in ("partition", "account", "qos") if getattr(opts, name)]
    lines += ["--open-mode=append", f"--signal=B:USR1@{opts.signal_lead}", "--requeue"]
    return [f"#SBATCH {line}" for line in lines]


def bash_syntax_ok(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-n"], input=script.encode(), capture_output=True)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(jobs())
def test_hostile_values_are_refused_or_cannot_leave_their_place(case):
    try:
        job = dryrun(*case)
    except FieldError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)
        assert exc.field.split(".")[0] in FIELDS, exc.field
        return
    script = job.text
    checked = bash_syntax_ok(script)
    assert checked.returncode == 0, checked.stderr.decode()
    assert sbatch_block(script) == expected_block(job)
    for line in sbatch_block(script):  # nothing in the block that a shell or sbatch would expand
        assert re.fullmatch(r"#SBATCH --[a-z-]+(=[A-Za-z0-9_@+=:,./%-]+)?", line), line


STUB = r"""#!/bin/bash
# Records its argv (NUL-separated) in $STUBS/<name>.args, then plays its part.
name=${0##*/}
[ "$name" = scontrol ] || printf '%s\0' "$@" >"$STUBS/$name.args"
case "$name" in
  scontrol)
    case "$1 $2" in
      "show hostnames") echo node7; echo node8 ;;
      "show node") echo "NodeName=node7 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=node7" ;;
    esac ;;
  srun)
    while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
    exec "$@" ;;
  apptainer|singularity)
    shift  # exec
    while [ "${1#--}" != "$1" ]; do
      case "$1" in --nv) shift ;; *) shift 2 ;; esac
    done
    shift  # the image
    exec "$@" ;;
  torchrun|python)
    env -0 >"$STUBS/$name.env"
    while read -r key value; do
      [ "$key" = SigIgn: ] && echo "$value" >"$STUBS/$name.sigign"
    done </proc/$$/status ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def stub_bin(tmp_path_factory) -> Path:
    bin_dir = tmp_path_factory.mktemp("stub-bin")
    for name in ("srun", "scontrol", "scancel", "apptainer", "singularity", "torchrun", "python", "module"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def read_args(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8", "surrogateescape").split("\0")[:-1]


def run_script(script: str, stub_bin: Path, work: Path) -> Path:
    stubs = work / "stubs"
    stubs.mkdir()
    env = {"PATH": f"{stub_bin}:/usr/bin:/bin", "STUBS": str(stubs), "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "node[7-8]", "HOME": str(work)}
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return stubs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_value_arrives_literally_when_the_script_runs(data, stub_bin, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    job, options, text = data.draw(jobs(job_dir=str(work / "out")))
    options["workdir"] = str(work)
    job["job_name"] = "job"
    for name in ("partition", "account", "qos", "time"):
        options[name] = None
    if data.draw(st.booleans()):
        job.update(recipe="optuna", nodes=1)  # a search recipe: python, not torchrun
    venv = data.draw(st.one_of(st.none(), hostile.filter(lambda v: v and "/" not in v and "\0" not in v
                                                         and v not in (".", ".."))))
    if venv is not None and options["container"] == "none":
        options["venv"] = str(work / venv)
        (work / venv / "bin").mkdir(parents=True)
        (work / venv / "bin" / "activate").write_text('touch "$STUBS/venv-activated"\n')
    try:
        request = dryrun(job, options, text)
    except FieldError:
        assume(False)
    stubs = run_script(request.text, stub_bin, work)
    app, opts = request.app, request.opts

    # The config file next to the outputs is the resolved config, byte for byte.
    assert Path(request.config_path).read_text(encoding="utf-8") == text
    # The exported environment arrives unchanged in the training processes.
    seen = dict(item.split("=", 1) for item in read_args(stubs / "python.env") if "=" in item)
    for key, value in app.env.items():
        assert seen.get(key) == value, key
    # The keeper (torchrun's arguments) or the search recipe gets exactly the command line every backend runs.
    program_args = read_args(stubs / "python.args")
    if not app.is_search:
        assert program_args == ["-m", "launcher.keeper", "--nnodes", str(app.nodes), "--nproc_per_node",
                                str(app.nproc_per_node), "--rdzv_backend", "c10d", "--rdzv_endpoint",
                                "10.1.2.3:15042", "--rdzv_id", "42", app.entry, "--config", request.config_path]
    else:
        assert program_args == [app.entry, "--config", request.config_path]
    srun_args = read_args(stubs / "srun.args")
    if opts.container == "enroot":
        assert f"--container-image={app.image}" in srun_args
        assert f"--container-workdir={request.workdir}" in srun_args
        assert f"--container-mounts={','.join(request.mounts)}" in srun_args
    if opts.container in ("apptainer", "singularity"):
        args = read_args(stubs / f"{opts.container}.args")
        expected = ["exec", *(["--nv"] if app.gpus_per_node else [])]
        for mount in request.mounts:
            expected += ["--bind", mount]
        assert args[:len(expected) + 3] == [*expected, "--pwd", request.workdir, app.image]
    if opts.container == "oci":
        assert f"--container={app.image}" in srun_args
        assert srun_args[srun_args.index(f"--container={app.image}") + 1] == \
            "--export=" + (",".join(sorted(app.env)) or "NONE")
    elif opts.container != "none":  # the job dir is mounted, or lies under a mount ("/" included)
        assert app.output_dir in request.mounts or any(
            (app.output_dir + "/").startswith(m.split(":")[0].rstrip("/") + "/") for m in opts.mounts)
    if opts.modules:
        assert read_args(stubs / "module.args") == ["load", *opts.modules]
    if opts.venv:
        assert (stubs / "venv-activated").exists()
    assert not list(work.glob("pwned")) and not list(Path(app.output_dir).glob("pwned"))


BAD_SBATCH_OPTIONS = ["--job-name", "--partition", "--account", "--qos", "--time", "--output-root", "--workdir"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(option=st.sampled_from(BAD_SBATCH_OPTIONS),
       value=hostile.filter(lambda v: v and "\0" not in v and re.search(r"[\n\r'\"$`;&|\\# %*?<>!{}]", v)))
def test_cli_refuses_bad_values_in_one_line_naming_the_option(option, value):
    if option in ("--output-root", "--workdir"):
        value = "/ok/" + value
    result = CliRunner().invoke(cli.main, ["render", "sft", option, value])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and option in lines[0], lines
    assert "Traceback" not in result.output


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(["partition", "account", "qos", "time", "workdir"]),
       value=hostile.filter(lambda v: re.search(r"[\n\r'\"$`;&|\\# %*?<>!{}]", v)))
def test_profile_files_refuse_bad_values_in_one_line(tmp_path_factory, key, value):
    from launcher import profiles

    path = tmp_path_factory.mktemp("profiles") / "launcher.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"p": {key: value}}}))
    with pytest.raises(profiles.ProfileError) as caught:
        profiles.load("p", files=[path])
    message = str(caught.value)
    assert "\n" not in message and f"profile 'p': {key}:" in message


def test_a_hostile_config_value_goes_through_the_real_recipe_check(tmp_path, stub_bin):
    """End to end with the sft recipe's own --check: the value lands in the config file unchanged."""
    value = "a'b\"c $(touch pwned) `touch pwned`; touch pwned\n#SBATCH --wrap=x\nFT_RECIPES_CONFIG"
    result = CliRunner().invoke(cli.main, ["render", "sft", "--set", f"hub_model_id={value}",
                                           "--workdir", str(tmp_path), "--output-root", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert bash_syntax_ok(script).returncode == 0
    run_script(script, stub_bin, tmp_path)
    written = yaml.safe_load((tmp_path / "out" / "sft" / "job-config.yaml").read_text())
    assert written["hub_model_id"] == value
    assert not list(tmp_path.rglob("pwned"))


def test_the_template_quotes_every_value_outside_the_sbatch_block():
    """Outside #SBATCH lines, each {{ }} is shell-quoted, an integer, or the here-document's body."""
    source = (slurm.TEMPLATES / slurm.TEMPLATE).read_text()
    allowed_bare = {"app.config_text", "config_end", "app.nodes", "app.nproc_per_node", "app.gpus_per_node",
                    "opts.cpus_per_task", "app.workers", "app.workers - 1", "opts.max_retries", "opts.signal_lead",
                    "opts.max_continuations",
                    "opts.container", "app.recipe.name", "app.profile", "app.output_dir", "key"}
    for line in source.splitlines():
        for expr in re.findall(r"{{(.*?)}}", line):
            expr = expr.strip()
            if line.startswith("#SBATCH") or expr.endswith("| q") or '| map("q")' in expr:
                continue
            assert expr in allowed_bare, f"unquoted value in the template: {{{{ {expr} }}}} in {line!r}"


SAFE_JOB = dict(recipe="sft", job_name="sft", overrides=("output_dir=/shared/out/sft",))


def test_the_config_end_marker_cannot_end_the_here_document_early():
    with pytest.raises(FieldError, match="config"):
        dryrun(SAFE_JOB, {}, "a: 1\nFT_RECIPES_CONFIG\nb: 2\n")


def test_environment_names_are_checked():
    with pytest.raises(FieldError, match="env"):
        dryrun(SAFE_JOB, {"env": {"A=B; touch x": "1"}}, "seed: 1\n")


def test_environment_names_are_exported_in_pythons_order_whatever_their_case():
    """Jinja's dictsort ignores case by default ("_0" before "A"); the script lists names as sorted() does."""
    env = {"_0": "1", "B": "2", "A": "3"}
    job = dryrun(SAFE_JOB, {"container": "oci", "image": "img", "env": env}, "seed: 1\n")
    assert "--export=A,B,_0 " in job.text
    exported = [line.split("=")[0] for line in job.text.splitlines() if line.startswith("export ") and
                line.split("=")[0].removeprefix("export ") in env]
    assert exported == ["export A", "export B", "export _0"]


def test_stub_harness_sees_a_missing_quote(stub_bin, tmp_path):
    """The harness itself can fail: an unquoted value with a space would split into two words."""
    job = dict(SAFE_JOB, overrides=(f"output_dir={tmp_path / 'out'}",))
    request = dryrun(job, {"workdir": str(tmp_path), "env": {"SPACED": "a b"}}, "seed: 1\n")
    script = request.text.replace("export SPACED='a b'", "export SPACED=a b")
    stubs = run_script(script, stub_bin, tmp_path)
    seen = dict(item.split("=", 1) for item in read_args(stubs / "python.env") if "=" in item)
    assert seen.get("SPACED") != "a b"


def test_nul_bytes_are_refused():
    with pytest.raises(FieldError, match="image"):
        dryrun(SAFE_JOB, {"container": "apptainer", "image": "a\0b"}, "seed: 1\n")
