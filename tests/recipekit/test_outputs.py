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


def test_finish_writes_every_output_of_a_run_on_rank_0(tmp_path, capsys):
    import json

    from recipekit import sft

    cfg = sft.Options(output_dir=str(tmp_path), learning_rate=3e-3)
    metrics = {**outputs.run_facts("sft", tmp_path / "checkpoint-4", "cpu"), "eval_loss_after": 1.5}
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.8}, {"step": 2, "eval_loss": 1.5}]
    outputs.finish(cfg, "sft", metrics, history, lambda m, out: print(f"summary of {m['recipe']} in {out}"))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == {"recipe": "sft", "resumed_from": str(tmp_path / "checkpoint-4"), "world_size": 1,
                       "device": "cpu", "eval_loss_after": 1.5, "log_history": history}
    resolved = (tmp_path / "resolved_config.yaml").read_text()
    assert resolved.startswith("# Resolved config of recipe sft; rerun with: launcher run recipes/sft --config ")
    assert "learning_rate: 0.003" in resolved and (tmp_path / "loss.png").stat().st_size > 0
    assert capsys.readouterr().out == f"summary of sft in {tmp_path}\n"


def test_finish_writes_nothing_on_other_ranks(tmp_path, monkeypatch):
    from recipekit import sft

    monkeypatch.setenv("RANK", "1")
    outputs.finish(sft.Options(output_dir=str(tmp_path)), "sft", {}, [], lambda m, out: None)
    assert list(tmp_path.iterdir()) == []
