"""recipekit.outputs: files are replaced whole, with the permissions of any other file written."""

from __future__ import annotations

import os

import pytest

from recipekit import outputs


def test_a_file_is_replaced_whole_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    outputs.write_atomic(path, "{}\n")
    outputs.write_atomic(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(path.parent) == ["metrics.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "trials.csv"
    outputs.write_atomic(path, "old\n")

    def fail(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        outputs.replace_atomically(path, fail)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["trials.csv"]


def test_the_temp_file_keeps_the_suffix_that_tells_writers_the_format(tmp_path):
    seen = []
    outputs.replace_atomically(tmp_path / "loss.png", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith(".png") and (tmp_path / "loss.png").is_file()
