"""JobSpec: every field checked on construction; building one runs the recipe's own --check."""

from __future__ import annotations

import pytest

from launcher import jobspec, recipes
from launcher.jobspec import FieldError, JobSpec
from launcher.profiles import Profile

BASE = dict(recipe="sft", entry="recipes/sft/train.py", program="torchrun", config_text="seed: 1\n",
            job_name="sft", job_dir="/shared/out/sft", workdir="/shared/src")


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("10:30", 630), ("04:00:00", 14400), ("2-00", 172800),
                                           ("1-02:03", 93780), ("1-00:00:10", 86410), ("soon", None), ("", None),
                                           ("1:2:3:4", None), ("-5", None)])
def test_slurm_time_limits(text, seconds):
    assert jobspec.time_seconds(text) == seconds


@pytest.mark.parametrize("changes, field", [
    ({"job_name": "has space"}, "job_name"),
    ({"job_name": "x" * 65}, "job_name"),
    ({"nodes": 0}, "nodes"),
    ({"gpus_per_node": True}, "gpus_per_node"),
    ({"partition": "gpu\n#SBATCH --x"}, "partition"),
    ({"job_dir": "relative/out"}, "output_dir"),
    ({"job_dir": "/out/%j"}, "output_dir"),
    ({"job_dir": "/out/../etc"}, "output_dir"),
    ({"workdir": "/with space"}, "workdir"),
    ({"time": "30", "signal_lead": 1800}, "signal_lead"),
    ({"container": "apptainer"}, "image"),
    ({"image": "/x.sif"}, "image"),
    ({"container": "enroot", "image": "img", "mounts": ("/a,/b",)}, "mounts"),
    ({"entry": "recipes/sft/../../x.py"}, "entry"),
    ({"program": "python", "entry": "recipes/o/search.py", "nodes": 2}, "nodes"),
    ({"workers": 2}, "workers"),
    ({"config_text": "seed: 1"}, "config"),
    ({"env": {"PS4": "$(x)"}}, "env"),
])
def test_bad_fields_name_themselves(changes, field):
    with pytest.raises(FieldError) as caught:
        JobSpec(**{**BASE, **changes})
    assert caught.value.field == field and "\n" not in str(caught.value)


def test_build_resolves_the_config_with_the_recipes_own_check(tmp_path):
    profile = Profile(name="t", output_root=str(tmp_path), partition="gpu")
    spec = jobspec.build(recipes.load("sft-zero2"), profile, overrides=("learning_rate=1e-4",), nodes=2,
                         gpus_per_node=4)
    assert spec.job_dir == f"{tmp_path}/sft-zero2" and spec.nproc_per_node == 4 and spec.partition == "gpu"
    assert "learning_rate: 0.0001" in spec.config_text
    assert f"output_dir: {tmp_path}/sft-zero2" in spec.config_text
    assert "zero_config: recipes/sft-zero2/zero2.json" in spec.config_text  # relative to the job's workdir
    assert spec.overrides[-1] == f"output_dir={tmp_path}/sft-zero2"


def test_an_output_dir_given_with_set_is_the_job_dir(tmp_path):
    spec = jobspec.build(recipes.load("sft"), Profile(), overrides=(f"output_dir={tmp_path}/mine",), job_name="j")
    assert spec.job_dir == f"{tmp_path}/mine" and spec.nproc_per_node == 1


def test_containers_mount_the_job_dir_unless_a_mount_covers_it(tmp_path):
    profile = Profile(container="apptainer", image="/i.sif", output_root=str(tmp_path))
    assert jobspec.build(recipes.load("sft"), profile).mounts == (f"{tmp_path}/sft",)
    covered = Profile(container="apptainer", image="/i.sif", output_root=str(tmp_path), mounts=(str(tmp_path),))
    assert jobspec.build(recipes.load("sft"), covered).mounts == (str(tmp_path),)


def test_bad_input_is_refused_before_the_recipe_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(jobspec, "resolve_config", lambda *a: pytest.fail("the recipe's --check ran"))
    with pytest.raises(FieldError, match="nodes"):
        jobspec.build(recipes.load("sft"), Profile(output_root=str(tmp_path)), nodes=0)
