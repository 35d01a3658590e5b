"""The launcher CLI as a user meets it: listing, validation errors, refusing bad data early."""

from __future__ import annotations

import json

from tests.conftest import REPO, run_launcher


def test_list_shows_every_recipe_with_a_description():
    result = run_launcher("list")
    assert result.returncode == 0
    listed = {line.split()[0]: line for line in result.stdout.splitlines()}
    on_disk = {p.parent.name for p in REPO.glob("recipes/*/config.yaml")}
    assert set(listed) == on_disk and "sft" in on_disk
    assert all(len(line.split(None, 1)) == 2 for line in listed.values())  # every recipe has a description
    assert "SFTTrainer" in listed["sft"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_value_is_one_line_naming_the_key():
    result = run_launcher("run", "recipes/sft", "--set", "learning_rate=oops")
    assert_one_line_error(result, "learning_rate", "expected a number", "'oops'")


def test_unknown_key_is_one_line_naming_the_key():
    result = run_launcher("run", "recipes/sft", "--set", "no_such_key=1")
    assert_one_line_error(result, "no_such_key", "unknown key")


def test_same_errors_under_torchrun():
    result = run_launcher("run", "recipes/sft", "--nproc", "2", "--set", "learning_rate=oops")
    assert_one_line_error(result, "learning_rate")


def test_dataset_without_the_text_column_is_refused_before_training(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    out = tmp_path / "out"
    result = run_launcher("run", "recipes/sft", "--set", f"dataset_name={data}", "--set", f"output_dir={out}")
    assert_one_line_error(result, "dataset_name", "matches no known format", "columns found: question, answer")
    assert not out.exists()


def test_validate_prints_the_resolved_config():
    result = run_launcher("validate", "recipes/sft", "--set", "learning_rate=1e-4", "--set", "use_peft=false")
    assert result.returncode == 0, result.stderr
    assert "learning_rate: 0.0001" in result.stdout and "use_peft: false" in result.stdout


def test_unknown_recipe():
    result = run_launcher("run", "recipes/nope")
    assert result.returncode == 2 and "no recipe at 'recipes/nope'" in result.stderr


def test_unreachable_hub_model_or_push_is_refused_before_training(tmp_path):
    """HF_HUB_OFFLINE=1: the Hub is unreachable here as on an air-gapped cluster (the same error either way)."""
    out = tmp_path / "out"
    offline = {"HF_HUB_OFFLINE": "1", "HOTEL_HUB_TOKEN": "hf_not_a_real_token"}
    result = run_launcher("run", "recipes/sft", "--set", "model_name=nobody/no-such-model",
                          "--set", f"output_dir={out}", env=offline)
    assert_one_line_error(result, "model_name", "'nobody/no-such-model'", "no Hub model")
    result = run_launcher("run", "recipes/sft", "--set", "push_to_hub=true", "--set", "hub_model_id=me/hotel",
                          "--set", "use_auth_token=HOTEL_HUB_TOKEN", "--set", f"output_dir={out}", env=offline)
    assert_one_line_error(result, "push_to_hub", "cannot reach the Hugging Face Hub")
    assert not out.exists()


def test_the_command_line_has_no_branch_per_backend():
    """cli.py names no backend in its logic: each command dispatches through launcher/backend.py."""
    import ast

    from launcher import backend

    tree = ast.parse((REPO / "launcher" / "cli.py").read_text())
    names = set(backend.SCHEDULERS) | {"local"}
    compared = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for side in [node.left, *node.comparators] if isinstance(side, ast.Constant) and side.value in names]
    assert compared == []
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not imported & {"slurm", "k8s", "slurm_client", "k8s_client"}


def test_the_choices_the_command_line_offers_are_the_backends_own():
    from launcher import backend, cli, k8s, k8s_fields, slurm

    choices = {param.name: tuple(param.type.choices) for param in cli.render.params
               if hasattr(param.type, "choices")}
    assert choices == {"backend": tuple(backend.SCHEDULERS), "container": slurm.CONTAINERS, "api": k8s.APIS,
                       "gpu_request": slurm.GPU_REQUESTS,
                       "clean_pod_policy": k8s_fields.CLEAN_POD_POLICIES}


def test_a_field_is_named_by_the_option_that_sets_it():
    from launcher import cli

    named = {field: cli.flag(cli.submit, field) for field in (
        "gpus_per_node", "labels.team", "env.HF_HOME", "mounts", "node_selector", "output_dir", "overrides",
        "tolerations", "recipe", "JOB", "dry_run_server", "context")}
    assert named == {"gpus_per_node": "--gpus", "labels.team": "--label team", "env.HF_HOME": "--env HF_HOME",
                     "mounts": "--mount", "node_selector": "--node-selector", "output_dir": "--set output_dir",
                     "overrides": "--set", "tolerations": "the profile's tolerations", "recipe": "RECIPE",
                     "JOB": "JOB", "dry_run_server": "--dry-run", "context": "--context"}
