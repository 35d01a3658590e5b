"""recipekit.config: strict keys, typed values, every problem reported at once."""

from dataclasses import dataclass
from typing import Literal, Optional, Union

import pytest

from recipekit import config
from recipekit.config import ConfigError, option


@dataclass
class Example:
    learning_rate: float = option(1e-4, help="lr", above=0.0)
    batch_size: int = option(8, help="bs", min=1)
    use_peft: bool = option(True, help="peft")
    name: Optional[str] = option(None, help="name")
    schedule: Literal["cosine", "linear"] = option("cosine", help="schedule")
    targets: Union[Literal["all-linear"], list[str]] = option("all-linear", help="targets")
    extra: dict[str, bool] = option(default_factory=dict, help="kwargs")

    def check(self):
        return ["name: must not be 'bad'"] if self.name == "bad" else []


def problems_of(values):
    with pytest.raises(ConfigError) as info:
        config.build(Example, values)
    return info.value.problems


def test_defaults_and_types_are_kept():
    cfg = config.build(Example, {})
    assert cfg.learning_rate == 1e-4 and cfg.batch_size == 8 and cfg.targets == "all-linear"


def test_numeric_strings_are_accepted_for_floats_only():
    # PyYAML reads 1e-3 (no dot) as a string; float fields accept it, int fields do not.
    assert config.build(Example, {"learning_rate": "1e-3"}).learning_rate == 1e-3
    assert problems_of({"batch_size": "8"}) == ["batch_size: expected an integer, got '8'"]


def test_unknown_key_lists_close_matches():
    (problem,) = problems_of({"learing_rate": 1.0})
    assert problem == "learing_rate: unknown key; did you mean learning_rate?"


def test_every_problem_is_reported_at_once():
    found = problems_of({"learning_rate": "oops", "batch_size": 0, "use_peft": "yes", "nope": 1})
    assert [p.split(":")[0] for p in found] == ["learning_rate", "batch_size", "use_peft", "nope"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", -1.0, 0.0, True, [1.0], None])
def test_bad_floats_are_rejected(value):
    (problem,) = problems_of({"learning_rate": value})
    assert problem.startswith("learning_rate: ")


def test_literal_union_and_list():
    assert config.build(Example, {"targets": ["q_proj"]}).targets == ["q_proj"]
    (problem,) = problems_of({"schedule": "warm"})
    assert problem == "schedule: expected one of 'cosine', 'linear', got 'warm'"
    (problem,) = problems_of({"targets": [1]})
    assert problem == "targets: expected 'all-linear' or a list of strings, got [1]"


def test_cross_field_check_runs_after_types():
    assert problems_of({"name": "bad"}) == ["name: must not be 'bad'"]


def test_overrides_are_parsed_as_yaml_and_dotted_keys_reach_mappings():
    values = config.apply_overrides({"extra": {"a": True}}, ["batch_size=4", "use_peft=false", "extra.b=false",
                                                              "name=hello world", "targets=[q_proj, v_proj]"])
    cfg = config.build(Example, values)
    assert (cfg.batch_size, cfg.use_peft, cfg.extra, cfg.name) == (4, False, {"a": True, "b": False}, "hello world")
    assert cfg.targets == ["q_proj", "v_proj"]


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key=value"):
        config.apply_overrides({}, ["batch_size"])


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.read_yaml(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.read_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.read_yaml(bad)


def test_dump_round_trips(tmp_path):
    cfg = config.build(Example, {"learning_rate": 3e-4, "targets": ["q_proj"], "name": "x: y"})
    path = tmp_path / "resolved.yaml"
    path.write_text(config.dump_yaml(cfg))
    assert config.load(Example, path) == cfg
