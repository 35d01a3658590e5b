"""recipekit.distributed: outside torch.distributed every helper is the one-process answer."""

from __future__ import annotations

from recipekit import distributed


def test_one_process_without_torchrun(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (0, 0, 1)
    assert distributed.is_main() and distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.all_sum(2, 3.5) == [2.0, 3.5]
    with distributed.main_first():
        distributed.barrier()
    monkeypatch.setenv("RANK", "3")
    assert not distributed.is_main()
