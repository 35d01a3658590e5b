"""appspec.plan: the job's values checked once, the backend's placement, then the recipe's own --check."""

from __future__ import annotations

import pytest

from launcher import appspec, options, recipes, slurm
from launcher.appspec import AppOptions
from launcher.errors import ConfigRejected, FieldError
from launcher.profiles import Profile

SLURM = slurm.SlurmBackend()


def resolved(text: str = "seed: 1\n"):
    """A stand-in for the recipe's --check, so a case takes milliseconds."""
    return lambda recipe, config, overrides: text


def plan(recipe: str = "sft", settings: dict | None = None, cli: dict | None = None, resolve=None, **shape):
    profile = Profile(name="t", settings={"output_root": "/shared/out", **(settings or {})})
    return appspec.plan(SLURM, profile, recipes.load(recipe), cli, resolve=resolve or resolved(), **shape)


@pytest.mark.parametrize("cli, shape, recipe, field", [
    ({}, dict(job_name="has space"), "sft", "job_name"),
    ({}, dict(job_name="x" * 65), "sft", "job_name"),
    ({}, dict(nodes=0), "sft", "nodes"),
    ({}, dict(gpus_per_node=True), "sft", "gpus_per_node"),
    ({}, dict(nproc_per_node=2000), "sft", "nproc_per_node"),
    ({"partition": "gpu\n#SBATCH --x"}, {}, "sft", "partition"),
    ({}, dict(overrides=("output_dir=/out/%j",)), "sft", "output_dir"),
    ({}, dict(overrides=("output_dir=/out/../etc",)), "sft", "output_dir"),
    ({}, dict(overrides=("seed=\0",)), "sft", "overrides"),
    ({"workdir": "/with space"}, {}, "sft", "workdir"),
    ({"time": "30", "signal_lead": 1800}, {}, "sft", "signal_lead"),
    ({"container": "apptainer"}, {}, "sft", "image"),
    ({"image": "/x.sif"}, {}, "sft", "image"),
    ({"container": "enroot", "image": "img", "mounts": ("/a,/b",)}, {}, "sft", "mounts"),
    ({"container": "apptainer", "image": "i.sif", "mounts": (":/data",)}, {}, "sft", "mounts"),
    ({}, dict(nodes=2), "optuna", "nodes"),
    ({}, dict(workers=2), "sft", "workers"),
    ({"env": {"PS4": "$(x)"}}, {}, "sft", "env"),
])
def test_bad_values_name_themselves(cli, shape, recipe, field):
    with pytest.raises(FieldError) as caught:
        plan(recipe, cli=cli, **shape)
    assert caught.value.field == field and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["seed: 1", "a: 1\nFT_RECIPES_CONFIG\nb: 2\n", "a: \0\n"])
def test_the_backend_refuses_a_config_it_cannot_ship(text):
    app, opts, _ = plan(resolve=resolved(text))
    with pytest.raises(FieldError, match="config"):
        SLURM.dryrun(app, opts)


def test_plan_resolves_the_config_with_the_recipes_own_check(tmp_path):
    app, opts, notes = appspec.plan(SLURM, Profile(name="t", settings={"output_root": str(tmp_path)}),
                                    recipes.load("sft-zero2"), {"partition": "gpu"},
                                    overrides=("learning_rate=1e-4",), nodes=2, gpus_per_node=4)
    assert app.output_dir == f"{tmp_path}/sft-zero2" and app.nproc_per_node == 4 and opts.partition == "gpu"
    assert "learning_rate: 0.0001" in app.config_text and notes == []
    assert f"output_dir: {tmp_path}/sft-zero2" in app.config_text
    assert "zero_config: recipes/sft-zero2/zero2.json" in app.config_text  # relative to the job's workdir
    assert app.overrides[-1] == f"output_dir={tmp_path}/sft-zero2"


def test_an_output_dir_given_with_set_is_the_job_dir(tmp_path):
    app, _, _ = appspec.plan(SLURM, Profile(), recipes.load("sft"), overrides=(f"output_dir={tmp_path}/mine",),
                             job_name="j")
    assert app.output_dir == f"{tmp_path}/mine" and app.nproc_per_node == 1 and app.job_name == "j"
    assert app.overrides == (f"output_dir={tmp_path}/mine",) and f"output_dir: {tmp_path}/mine" in app.config_text


def test_a_config_the_recipe_check_refuses_is_reported_with_its_own_words():
    with pytest.raises(ConfigRejected) as caught:
        plan("sft-zero2", resolve=recipes.resolve_config, overrides=("load_in_4bit=true",))
    assert caught.value.exit_code == 2 and "load_in_4bit" in caught.value.report


def test_the_job_takes_env_and_image_from_profile_and_command_line():
    app, _, _ = plan(settings={"env": {"A": "1", "B": "2"}, "container": "enroot", "image": "from-profile"},
                     cli={"env": {"B": "3"}, "image": "from-cli"})
    assert app.env == {"A": "1", "B": "3"} and app.image == "from-cli"
    assert options.build(AppOptions, {"env": {"A": "1"}}, {"env": {}}).env == {"A": "1"}


def test_bad_input_is_refused_before_the_recipe_runs():
    with pytest.raises(FieldError, match="nodes"):
        plan(nodes=0, resolve=lambda *args: pytest.fail("the recipe's --check ran"))
