"""Hostile config input, generated: every case is either valid or refused with one line per bad key.

Runs the sft recipe's real entry point in-process with ``--check`` (config and data validation,
no model load), from YAML files and ``--set`` overrides full of wrong types, unknown keys,
NaN/negative/huge numbers, empty and odd strings, non-UTF-8 bytes and missing files.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipekit import entry
from tests.conftest import load_recipe

SFT = load_recipe("sft")
KEYS = [f.name for f in fields(SFT.Config)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), -1, 0, 1e308, -0.0]),
    st.text(max_size=30), st.sampled_from(["", " ", "oops", "1e-3", "null", "\x00", "é", "../../etc/passwd",
                                           "missing.jsonl", "hotel", "tiny-random-llama", "$(rm -rf /)"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=8), scalars, max_size=3))
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=20))
override_text = st.one_of(st.text(max_size=40), st.sampled_from(["[1, 2", "{a: 1", "!!python/object:os.system x",
                                                                  ".nan", "-.inf", "1e999", "0x10", "~"]))


def check(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            entry.run(SFT.main, SFT.Config, "sft", SFT.__file__, argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def assert_clean_outcome(code: int, stderr: str, workdir: Path) -> None:
    assert code in (0, 2), (code, stderr)
    lines = stderr.splitlines()
    if code == 2:
        assert lines and all(line.startswith("error: ") and ": " in line[7:] for line in lines), stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["config.yaml"], "validation must not write outputs"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(config=st.dictionaries(keys, values, max_size=6))
def test_generated_yaml_configs(workdir, config):
    path = workdir / "config.yaml"
    try:
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        path.write_bytes(repr(config).encode("utf-8", "surrogatepass"))
    code, stderr = check(["--config", str(path), "--check"])
    assert_clean_outcome(code, stderr, workdir)


@SETTINGS
@given(overrides=st.lists(st.tuples(keys, override_text), max_size=4), raw=st.binary(max_size=40))
def test_generated_overrides_and_raw_bytes(workdir, overrides, raw):
    path = workdir / "config.yaml"
    path.write_bytes(raw)
    argv = ["--config", str(path), "--check"]
    for key, value in overrides:
        argv += ["--set", f"{key}={value}"]
    code, stderr = check(argv)
    assert_clean_outcome(code, stderr, workdir)
