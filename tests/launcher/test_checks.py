"""launcher/checks.py: the value checks every backend shares, each a one-line FieldError naming its field."""

from __future__ import annotations

import pytest

from launcher import checks
from launcher.errors import FieldError


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("10:30", 630), ("04:00:00", 14400), ("2-00", 172800),
                                           ("1-02:03", 93780), ("1-00:00:10", 86410), ("soon", None), ("", None),
                                           ("1:2:3:4", None), ("-5", None)])
def test_slurm_time_limits(text, seconds):
    assert checks.time_seconds(text) == seconds


def test_a_yaml_number_is_minutes():
    assert checks.check_time("time", 90) == "90" and checks.time_seconds("90") == 5400


@pytest.mark.parametrize("check, value, field", [
    (lambda v: checks.check_name("job_name", v), "has space", "job_name"),
    (lambda v: checks.check_int("nodes", v, 1, 10), True, "nodes"),
    (lambda v: checks.check_path("output_dir", v, "#SBATCH lines"), "/out/../etc", "output_dir"),
    (lambda v: checks.check_env("env", v), {"A=B; touch x": "1"}, "env"),
    (lambda v: checks.check_env("env", v), {"A": 1}, "env.A"),
    (lambda v: checks.no_nul("image", v), "a\0b", "image"),
    (lambda v: checks.check_choice("container", v, ("none", "enroot")), "docker", "container"),
])
def test_bad_values_name_their_field_in_one_line(check, value, field):
    with pytest.raises(FieldError) as caught:
        check(value)
    assert caught.value.field == field and "\n" not in str(caught.value)
