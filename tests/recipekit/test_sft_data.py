"""recipekit.sft_data: chat rows trained on the reply only, packed for the hand-written loops."""

from __future__ import annotations

from recipekit import sft_data
from recipekit.data import IGNORE_INDEX


def test_packed_items_restart_positions_and_never_target_a_documents_first_token():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
            {"input_ids": [], "labels": []}, {"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}]
    packed = sft_data.pack_items(rows, sft_data.SFTDataOptions(seq_length=8, packing=True))
    assert packed == [{"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9],
                       "position_ids": [0, 1, 2, 0, 1]},
                      {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, 2, 3, 4], "position_ids": [0, 1, 2, 3]}]
    assert len(sft_data.pack_items(rows, sft_data.SFTDataOptions(seq_length=8, packing=False))) == 3


def test_collated_items_give_the_padding_its_own_positions():
    import torch

    items = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "position_ids": [0, 1, 0]},
             {"input_ids": [8], "labels": [IGNORE_INDEX], "position_ids": [0]}]
    batch = sft_data.collate_items(items, pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]
    assert torch.equal(batch["position_ids"], torch.tensor([[0, 1, 0], [0, 0, 1]]))
