"""launcher.yaml profiles: strict keys, checked values, the user's file over the repository's."""

from __future__ import annotations

import pytest
import yaml

from launcher import options, profiles
from launcher.appspec import AppOptions
from launcher.errors import FieldError, ProfileError
from launcher.profiles import Profile
from launcher.slurm import SlurmOptions
from tests.conftest import run_launcher


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_the_repository_profiles_are_valid():
    default, found = profiles.available([profiles.REPO_FILE])
    assert {"example", "example-enroot", "example-venv", "local"} <= set(found)
    example = found["example"].settings
    assert example["container"] == "apptainer" and example["image"].endswith(".sif") and example["time"] == "04:00:00"
    assert example["env"]["HF_HOME"].startswith("/shared/")


def test_a_profile_is_read_with_its_types(tmp_path):
    path = write(tmp_path / "launcher.yaml", {"default_profile": "gpu", "profiles": {"gpu": {
        "partition": "a100,h100", "time": 90, "mounts": ["/data"], "modules": ["cuda/12"], "max_retries": 0}}})
    profile = profiles.load(None, files=[path])
    assert profile == Profile(name="gpu", settings=dict(partition="a100,h100", time="90", mounts=("/data",),
                                                        modules=("cuda/12",), max_retries=0))


def test_no_file_and_no_name_gives_the_built_in_defaults(tmp_path):
    assert profiles.load(None, files=[tmp_path / "absent.yaml"]) == Profile()


def test_the_users_file_wins_for_the_same_name(tmp_path):
    repo = write(tmp_path / "repo.yaml", {"profiles": {"gpu": {"partition": "old"}, "cpu": {}}})
    user = write(tmp_path / "user.yaml", {"default_profile": "gpu", "profiles": {"gpu": {"partition": "new"}}})
    assert profiles.load(None, files=[repo, user]).get("partition") == "new"
    assert profiles.load("cpu", files=[repo, user]).name == "cpu"


def test_the_user_file_lives_in_the_config_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert profiles.user_file() == tmp_path / "ft-recipes" / "launcher.yaml"


@pytest.mark.parametrize("data, message", [
    ({"profiles": {"gpu": {"partiton": "a"}}}, "profile 'gpu': partiton: unknown key; did you mean partition?"),
    ({"profile": {}}, "profile: unknown key; did you mean profiles"),
    ({"profiles": {"gpu": {"time": "soon"}}}, "profile 'gpu': time: must be a Slurm time limit"),
    ({"profiles": {"gpu": {"container": "docker"}}}, "container: must be one of none, apptainer, singularity, enroot"),
    ({"profiles": {"gpu": {"env": {"A": 1}}}}, "env.A: expected a string (quote numbers in YAML)"),
    ({"profiles": {"gpu": {"env": {"SLURM_JOB_ID": "1"}}}}, "env: SLURM_JOB_ID is reserved"),
    ({"profiles": {"gpu": {"mounts": "/data"}}}, "mounts: expected a list of strings"),
    ({"profiles": {"bad name": {}}}, "profile: must be 1-64 letters"),
    ({"profiles": {"gpu": {"cpus_per_task": 0}}}, "cpus_per_task: must be an integer from 1 to 4096"),
    ({"profiles": {"gpu": {"workdir": "relative/dir"}}}, "workdir: must be an absolute path"),
    ("profiles: [unclosed", "not valid YAML (line 1)"),
    ("- a list", "expected a mapping with 'profiles:'"),
])
def test_bad_files_are_one_line_errors_naming_file_profile_and_key(tmp_path, data, message):
    path = write(tmp_path / "launcher.yaml", data)
    with pytest.raises(ProfileError) as caught:
        profiles.load("gpu", files=[path])
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unknown_profile_names_the_close_ones(tmp_path):
    path = write(tmp_path / "launcher.yaml", {"profiles": {"gpu-a100": {}, "cpu": {}}})
    with pytest.raises(ProfileError, match=r"no profile 'gpu-a10'.*did you mean gpu-a100\?"):
        profiles.load("gpu-a10", files=[path])


def test_command_line_options_override_and_are_checked():
    base = {"partition": "a", "env": {"A": "1"}, "time": "10", "max_retries": 5}
    cli = {"partition": "b", "time": None, "env": {"B": "2"}, "mounts": ()}
    slurm = options.build(SlurmOptions, base, cli)
    assert slurm.partition == "b" and slurm.time == "10" and slurm.mounts == () and slurm.max_retries == 5
    assert options.build(AppOptions, base, cli).env == {"A": "1", "B": "2"}  # added to the profile's
    with pytest.raises(FieldError) as caught:
        options.build(SlurmOptions, base, {"qos": "x;y"})
    assert caught.value.field == "qos"


def test_a_key_left_empty_keeps_the_default(tmp_path):
    path = write(tmp_path / "launcher.yaml", "profiles: {p: {pvc: null, signal_lead: 60, partition: null}}")
    profile = profiles.load("p", files=[path])
    assert options.build(SlurmOptions, profile.settings) == SlurmOptions(signal_lead=60)


def test_every_backend_key_is_a_profile_key():
    from launcher import k8s

    keys = profiles.keys()
    assert set(options.profile_keys(SlurmOptions)) | set(options.profile_keys(k8s.K8sOptions)) | {"env", "image"} \
        == set(keys)
    assert "api" not in keys  # a command-line option only


def test_cli_reports_a_bad_user_file_in_one_line(tmp_path):
    user = tmp_path / "ft-recipes"
    user.mkdir()
    write(user / "launcher.yaml", {"profiles": {"mine": {"acount": "x"}}})
    result = run_launcher("render", "sft", "--profile", "mine", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "acount: unknown key; did you mean account" in lines[0]
