"""recipekit.optim: one rule for weight decay, layer-wise LR decay and LR multipliers, in every recipe."""

from __future__ import annotations

import pytest

from recipekit import optim
from recipekit.schema import TrainingOptions


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM

    from recipekit import models

    return AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model))


def lr_of(groups, model) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["lr"] for group in groups for p in group["params"]}


def decay_of(groups, model) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in groups for p in group["params"]}


def test_one_learning_rate_gives_a_decayed_group_then_one_without_decay(tiny):
    groups = optim.param_groups(tiny, TrainingOptions(learning_rate=1e-3, weight_decay=0.1))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all(g["lr"] == 1e-3 for g in groups)
    decay = decay_of(groups, tiny)
    assert decay.keys() == {n for n, _ in tiny.named_parameters()}
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1 and decay["model.embed_tokens.weight"] == 0.1
    assert decay["model.layers.0.input_layernorm.weight"] == 0.0 and decay["model.norm.weight"] == 0.0
    assert optim.adamw_unless_uniform(tiny, TrainingOptions()) is None  # the Trainer builds its default


def test_layer_lr_decay_and_multipliers_scale_each_parameter(tiny):
    train = TrainingOptions(learning_rate=1e-3, layer_lr_decay=0.5, lr_multipliers={"mlp": 0.1, "q_proj": 3.0})
    lrs = lr_of(optim.param_groups(tiny, train), tiny)  # 2 layers
    assert lrs["model.layers.1.self_attn.k_proj.weight"] == pytest.approx(1e-3)  # the top layer
    assert lrs["model.layers.0.self_attn.k_proj.weight"] == pytest.approx(0.5e-3)
    assert lrs["model.embed_tokens.weight"] == pytest.approx(0.25e-3)
    assert lrs["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.05e-3)  # decay, then the first match
    assert lrs["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(3e-3)
    assert lrs["model.norm.weight"] == pytest.approx(1e-3)
    optimizer = optim.adamw_unless_uniform(tiny, train)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == sorted(set(lrs.values()))


def test_frozen_parameters_are_left_out(tiny):
    for name, param in tiny.named_parameters():
        param.requires_grad_(".layers.1." in name)
    try:
        groups = optim.param_groups(tiny, TrainingOptions())
        assert set(decay_of(groups, tiny)) == {n for n, p in tiny.named_parameters() if ".layers.1." in n}
    finally:
        tiny.requires_grad_(True)
