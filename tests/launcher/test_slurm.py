"""The Slurm backend: launcher render/submit/status/logs/cancel against stand-in sbatch/scontrol/scancel
(no cluster needed), and what a job's options change in its script.

The real cluster runs the same commands in tests/slurm/test_cluster.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher import appspec, recipes, slurm
from launcher.profiles import Profile
from tests.conftest import REPO, run_launcher

FAKE = {
    "sbatch": 'echo "$@" >"$FAKE_SLURM/sbatch.args"; pwd >"$FAKE_SLURM/sbatch.cwd"; cp "${@: -1}" "$FAKE_SLURM/submitted.sbatch"; echo "4242;ftlocal"',
    "scontrol": '''echo "$@" >>"$FAKE_SLURM/scontrol.args"
case "$*" in
  *" 4242") echo "JobId=4242 JobName=sft UserId=root(0) JobState=RUNNING Reason=None Restarts=1 RunTime=00:01:02 \
NodeList=node[1-2] ExitCode=0:0 StdOut=$FAKE_SLURM/out/sft/slurm-4242.out" ;;
  *" 77") echo "JobId=78 ArrayJobId=77 ArrayTaskId=0 JobName=s JobState=COMPLETED Reason=None Restarts=0 \
RunTime=00:00:05 NodeList=node1 ExitCode=0:0 StdOut=$FAKE_SLURM/w0.out"
          echo "JobId=77 ArrayJobId=77 ArrayTaskId=1 JobName=s JobState=FAILED Reason=NonZeroExitCode Restarts=0 \
RunTime=00:00:05 NodeList=node2 ExitCode=1:0 StdOut=$FAKE_SLURM/w1.out" ;;
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
esac''',
    "scancel": 'echo "$@" >"$FAKE_SLURM/scancel.args"',
}


@pytest.fixture
def fake_slurm(tmp_path) -> tuple[Path, dict]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return tmp_path, env


def test_render_prints_a_complete_sbatch_script(tmp_path):
    result = run_launcher("render", "recipes/sft-zero2", "--backend", "slurm", "--nodes", "2", "--gpus", "4",
                          "--partition", "gpu", "--time", "01:00:00", "--output-root", str(tmp_path),
                          "--set", "learning_rate=1e-4")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for line in ["#SBATCH --job-name=sft-zero2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue", "learning_rate: 0.0001"]:
        assert line + "\n" in script, line
    # Nothing Slurm opens before the script runs may be in the job's directory, which the script creates:
    # so a plain `sbatch` of this file starts, its log going where sbatch ran.
    assert "#SBATCH --output" not in script and "#SBATCH --chdir" not in script
    assert f"\ncd {REPO} || exit 2  #" in script and 'mkdir -p "$job_dir"\n' in script
    assert ("python -m launcher.keeper --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d \\\n"
            '  --rdzv_endpoint "$head_addr:$rdzv_port" --rdzv_id "$SLURM_JOB_ID" \\\n'
            '  recipes/sft-zero2/train.py --config "$config" &\n') in script
    assert not (tmp_path / "sft-zero2").exists()  # rendering writes nothing


def test_memory_whole_nodes_and_the_way_gpus_are_asked_for(tmp_path):
    def sbatch_lines(*args: str) -> list[str]:
        result = run_launcher("render", "recipes/sft", "--backend", "slurm", "--gpus", "4",
                              "--output-root", str(tmp_path), *args)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith("#SBATCH")]

    plain = sbatch_lines()
    assert "#SBATCH --gpus-per-node=4" in plain
    assert not any(line.startswith(("#SBATCH --mem", "#SBATCH --exclusive", "#SBATCH --gres")) for line in plain)
    chosen = sbatch_lines("--mem", "200G", "--exclusive", "--gpu-request", "gres")
    assert {"#SBATCH --mem=200G", "#SBATCH --exclusive", "#SBATCH --gres=gpu:4"} <= set(chosen)
    assert not any(line.startswith("#SBATCH --gpus-per-node") for line in chosen)  # Slurm refuses both


@pytest.mark.parametrize("args, message", [
    (("--mem", "lots"), "--mem: must be a size such as 200G"),
    (("--gpus", "4", "--nproc-per-node", "8"), "--nproc-per-node: 8 processes per node need a GPU each, and --gpus "
                                               "gives 4"),
])
def test_bad_resource_requests_are_one_line_errors(args, message):
    result = run_launcher("render", "recipes/sft", "--backend", "slurm", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_gpus_left_idle_are_pointed_out():
    result = run_launcher("render", "recipes/sft", "--backend", "slurm", "--gpus", "4", "--nproc-per-node", "2")
    assert result.returncode == 0 and "2 of the 4 GPUs per node stay idle" in result.stderr


def test_render_refuses_what_the_recipe_refuses():
    result = run_launcher("render", "recipes/sft-zero2", "--set", "load_in_4bit=true")
    assert result.returncode == 2 and "load_in_4bit" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_prints_the_script_and_submits_nothing(fake_slurm):
    root, env = fake_slurm
    result = run_launcher("submit", "sft", "--output-root", str(root / "out"), "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash\n") and "dry run: would write" in result.stderr
    assert not (root / "sbatch.args").exists() and not (root / "out").exists()


def test_submit_runs_sbatch_parsable_and_says_where_the_log_is(fake_slurm):
    root, env = fake_slurm
    rendered = run_launcher("submit", "sft", "--output-root", str(root / "out"), "--dry-run", env=env).stdout
    result = run_launcher("submit", "sft", "--output-root", str(root / "out"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("submitted job 4242 (sft)\n")
    assert f"log:     {root}/out/sft/slurm-4242.out" in result.stdout
    script = root / "out" / "sft" / "job.sbatch"
    assert (root / "sbatch.args").read_text().split() == ["--parsable", str(script)]
    assert (root / "sbatch.cwd").read_text() == f"{root}/out/sft\n"  # Slurm's default log file goes there
    assert script.read_text() == (root / "submitted.sbatch").read_text() == rendered  # what dry-run showed


def test_a_second_job_is_refused_a_directory_a_live_job_owns(fake_slurm):
    root, env = fake_slurm
    assert run_launcher("submit", "sft", "--output-root", str(root / "out"), env=env).returncode == 0
    owner = root / "out" / "sft" / "slurm-job-id"
    assert owner.read_text() == "4242\n"
    again = run_launcher("submit", "sft", "--output-root", str(root / "out"), env=env)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"{root}/out/sft belongs to job 4242, which is RUNNING" in again.stderr
    assert "give another --job-name, or cancel it first (launcher cancel 4242)" in again.stderr
    owner.write_text("77\n")  # a job that ended (the fake scontrol's array: COMPLETED and FAILED)
    assert run_launcher("submit", "sft", "--output-root", str(root / "out"), env=env).returncode == 0


def test_status_logs_and_cancel(fake_slurm):
    root, env = fake_slurm
    log = root / "out" / "sft" / "slurm-4242.out"
    log.parent.mkdir(parents=True)
    log.write_text("== job 4242, attempt 2\nhello\n")
    status = run_launcher("status", "4242", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout == (f"job 4242 (sft): RUNNING on node[1-2], run time 00:01:02, restarts 1\n"
                             f"log: {log}\n")
    logs = run_launcher("logs", "4242", env=env)
    assert logs.stdout == log.read_text()
    cancel = run_launcher("cancel", "4242", env=env)
    assert cancel.returncode == 0 and (root / "scancel.args").read_text().split() == ["4242"]
    preempt = run_launcher("cancel", "--preempt", "4242", env=env)
    assert preempt.returncode == 0 and (root / "scancel.args").read_text().split() == ["--signal=USR1", "--batch",
                                                                                       "4242"]


def test_status_of_an_array_shows_every_worker(fake_slurm):
    root, env = fake_slurm
    status = run_launcher("status", "77", env=env)
    assert status.stdout.splitlines()[:2] == [
        "job 77_0 (s): COMPLETED on node1, run time 00:00:05, restarts 0, exit code 0:0",
        "job 77_1 (s): FAILED (NonZeroExitCode) on node2, run time 00:00:05, restarts 0, exit code 1:0"]


def test_a_job_slurm_forgot_is_found_through_the_submit_record(fake_slurm):
    root, env = fake_slurm
    env["FAKE_SLURM"] = str(root)
    (root / "bin" / "sbatch").write_text('#!/bin/bash\necho 9001\n')
    assert run_launcher("submit", "sft", "--output-root", str(root / "out"), env=env).returncode == 0
    log = root / "out" / "sft" / "slurm-9001.out"
    log.write_text("finished long ago\n")
    status = run_launcher("status", "9001", env=env)
    assert status.returncode == 0 and "no longer known to Slurm" in status.stdout and f"log: {log}" in status.stdout
    assert run_launcher("logs", "9001", env=env).stdout == "finished long ago\n"
    unknown = run_launcher("status", "12345", env=env)
    assert unknown.returncode == 2 and "Slurm does not know job 12345" in unknown.stderr


@pytest.mark.parametrize("job", ["12;rm", "$(x)", "1-2", "1_2_3", ""])
def test_job_ids_are_checked(job):
    result = run_launcher("status", job)
    assert result.returncode == 2 and "JOB: expected a Slurm job id" in result.stderr


def test_without_slurm_the_error_says_what_to_do(tmp_path):
    env = {"PATH": "/usr/bin:/bin" if not Path("/usr/bin/sbatch").exists() else str(tmp_path)}
    result = run_launcher("cancel", "1", env=env)
    assert result.returncode == 1 and "scancel not found" in result.stderr and "Traceback" not in result.stderr


def script(settings: dict, recipe: str = "sft", **shape) -> str:
    """The script for ``settings`` (a profile), with a stand-in for the recipe's --check."""
    backend = slurm.SlurmBackend()
    app, opts, _ = appspec.plan(backend, Profile(settings=settings), recipes.load(recipe),
                                resolve=lambda *args: "seed: 1\n", **shape)
    return backend.dryrun(app, opts).text


def test_containers_mount_the_job_dir_unless_a_mount_covers_it(tmp_path):
    container = {"container": "apptainer", "image": "/i.sif", "output_root": str(tmp_path)}
    assert f"--bind {tmp_path}/sft --pwd" in script(container)
    covered = script({**container, "mounts": (str(tmp_path),)})
    assert f"--bind {tmp_path} --pwd" in covered and f"{tmp_path}/sft --pwd" not in covered
    enroot = script({**container, "container": "enroot", "image": "img.sqsh"})
    assert f"--container-image=img.sqsh --container-workdir={recipes.REPO_ROOT} --container-mounts={tmp_path}/sft" \
        in enroot
    assert "\ncd " not in enroot  # the batch shell stays where sbatch ran; the container has its workdir


def test_a_job_without_a_container_runs_in_the_workdir_with_its_venv_and_modules(tmp_path):
    text = script({"workdir": "/shared/src", "venv": "/shared/venv", "modules": ("cuda/12",),
                   "output_root": str(tmp_path), "max_retries": 7, "max_continuations": 2, "signal_lead": 90,
                   "qos": "high"})
    for line in ["cd /shared/src || exit 2  # the checkout holding recipes/, on the nodes", "module load cuda/12",
                 "source /shared/venv/bin/activate", "max_retries=7", "max_continuations=2  # empty: no limit",
                 "#SBATCH --signal=B:USR1@90", "#SBATCH --qos=high"]:
        assert line + "\n" in text, line
    assert "apptainer" not in text and "--container-image" not in text


def test_a_search_recipe_is_a_job_array_of_python_workers(tmp_path):
    text = script({"output_root": str(tmp_path)}, "optuna", workers=3)
    assert "#SBATCH --array=0-2\n" in text and "# The log: slurm-<job id>.out (slurm-<job id>_<worker>.out)" in text
    assert "  python recipes/optuna/search.py --config \"$config\" &\n" in text and "launcher.keeper" not in text




def test_oci_steps_do_not_inherit_node_0s_task_ids():
    """Inside Slurm's OCI containers no per-task SLURM_NODEID is set, so the batch shell's (node 0's) would
    reach every node, and each node's keeper would claim the rendezvous store (tests/images/test_slurm_oci.py
    runs the job)."""
    text = script({"container": "oci", "image": "/shared/bundle", "workdir": "/opt/ft-recipes"})
    assert "\nenv -u SLURM_NODEID -u SLURM_PROCID -u SLURM_LOCALID -u SLURMD_NODENAME srun " in text
    assert "\nsrun " in script({})  # without a container the tasks get their own ids
