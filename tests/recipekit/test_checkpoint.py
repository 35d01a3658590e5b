"""recipekit.checkpoint: only complete checkpoints are resumed from or kept."""

from recipekit import checkpoint


def make(root, step, complete):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    (path / "weights.bin").write_text("x")
    if complete:
        checkpoint.mark_complete(path, step)
    return path


def test_latest_complete_skips_a_half_written_newer_one(tmp_path):
    make(tmp_path, 10, True)
    make(tmp_path, 20, True)
    make(tmp_path, 30, False)
    assert checkpoint.latest_complete(tmp_path) == tmp_path / "checkpoint-20"


def test_latest_complete_of_an_empty_or_missing_dir(tmp_path):
    assert checkpoint.latest_complete(tmp_path) is None
    assert checkpoint.latest_complete(tmp_path / "absent") is None


def test_numeric_not_lexical_order(tmp_path):
    make(tmp_path, 9, True)
    make(tmp_path, 10, True)
    assert checkpoint.latest_complete(tmp_path) == tmp_path / "checkpoint-10"


def test_prune_keeps_the_newest_complete(tmp_path):
    for step in (10, 20, 30):
        make(tmp_path, step, True)
    make(tmp_path, 5, False)
    make(tmp_path, 40, False)  # being written right now: never touched
    checkpoint.prune(tmp_path, keep=1)
    assert [p.name for _, p, _ in checkpoint.checkpoints(tmp_path)] == ["checkpoint-30", "checkpoint-40"]


def test_publish_replaces_a_stale_copy(tmp_path):
    staged = tmp_path / ".staging" / "checkpoint-7"
    staged.mkdir(parents=True)
    (staged / "new").write_text("new")
    stale = make(tmp_path, 7, False)
    checkpoint.publish(staged, stale, 7)
    assert (stale / "new").exists() and not (stale / "weights.bin").exists()
    assert checkpoint.latest_complete(tmp_path) == stale


def test_staged_publishes_a_complete_checkpoint_and_keeps_the_newest(tmp_path):
    make(tmp_path, 1, True)
    leftover = tmp_path / ".staging" / "checkpoint-9"  # half written by a killed run
    leftover.mkdir(parents=True)
    for step in (2, 3):
        with checkpoint.staged(tmp_path, step, keep=2) as staging:
            assert staging == tmp_path / ".staging" / f"checkpoint-{step}" and staging.is_dir()
            assert not (tmp_path / f"checkpoint-{step}").exists()
            (staging / "weights.bin").write_text(str(step))
    assert [(s, p.name, done) for s, p, done in checkpoint.checkpoints(tmp_path)] == [
        (2, "checkpoint-2", True), (3, "checkpoint-3", True)]
    assert (tmp_path / "checkpoint-3" / "weights.bin").read_text() == "3"
    assert not (tmp_path / ".staging").exists()


def test_staged_publishes_nothing_when_writing_fails(tmp_path):
    import pytest

    with pytest.raises(OSError):
        with checkpoint.staged(tmp_path, 4, keep=None) as staging:
            (staging / "part").write_text("x")
            raise OSError("disk full")
    assert checkpoint.latest_complete(tmp_path) is None and not (tmp_path / "checkpoint-4").exists()


def test_resume_point_follows_the_resume_key(tmp_path):
    from recipekit.schema import TrainingOptions

    make(tmp_path, 5, True)
    assert checkpoint.resume_point(TrainingOptions(output_dir=str(tmp_path))) == tmp_path / "checkpoint-5"
    assert checkpoint.resume_point(TrainingOptions(output_dir=str(tmp_path), resume=False)) is None


def test_data_fingerprint_sees_a_changed_or_added_row_and_array_values():
    import numpy as np

    rows = [{"text": "a", "ids": np.arange(3)}, {"text": "b", "ids": np.arange(2)}]
    same = [{"ids": np.arange(3), "text": "a"}, {"text": "b", "ids": np.arange(2)}]
    assert checkpoint.data_fingerprint(rows) == checkpoint.data_fingerprint(same)
    assert checkpoint.data_fingerprint(rows) != checkpoint.data_fingerprint([rows[0], {"text": "b", "ids": np.arange(3)}])
    assert checkpoint.data_fingerprint(rows) != checkpoint.data_fingerprint([*rows, {"text": "c", "ids": np.arange(1)}])


def test_resume_point_refuses_a_checkpoint_written_on_other_data(tmp_path):
    import pytest

    from recipekit.errors import UsageError
    from recipekit.schema import TrainingOptions

    options = TrainingOptions(output_dir=str(tmp_path))
    old, new = [{"text": "old"}], [{"text": "new"}]
    assert checkpoint.resume_point(options, old) is None  # a fresh run: nothing to resume, its data noted
    make(tmp_path, 5, True)
    assert checkpoint.resume_point(options, old) == tmp_path / "checkpoint-5"
    with pytest.raises(UsageError, match=r"^resume: .*checkpoint-5 was written while training on other data"):
        checkpoint.resume_point(options, new)
    assert checkpoint.resume_point(TrainingOptions(output_dir=str(tmp_path), resume=False), new) is None


def test_a_checkpoint_without_a_data_fingerprint_still_resumes(tmp_path):
    from recipekit.schema import TrainingOptions

    make(tmp_path, 5, True)
    (tmp_path / "checkpoint-5" / checkpoint.MARKER).write_text('{"step": 5, "time": 0}\n')  # written before fingerprints
    assert checkpoint.resume_point(TrainingOptions(output_dir=str(tmp_path)), [{"text": "x"}]) == tmp_path / "checkpoint-5"
