"""bench/attention.py: the rows it times are packed as TRL packs them, under the mask transformers builds."""

from __future__ import annotations

from bench import attention


def test_packed_rows_hold_whole_documents_cycled_and_cut_only_at_the_end():
    positions = attention.packed_positions(10, [3, 4])
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 2]]


def test_the_block_mask_is_causal_within_each_document_only():
    import torch

    from recipekit import cpu_speedups

    positions = attention.packed_positions(5, [2, 3])
    mask = attention.block_mask(positions)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    # The per-document path accepts exactly this mask, so the two timed paths compute the same attention.
    per_document = cpu_speedups.DocumentAttention(None, min_row_length=0)
    assert per_document.bounds(positions, mask) == [0, 2, 5]
