"""recipekit.frozen_prefix: the frozen bottom layers' output is reused per document, and only where it cannot differ."""

from __future__ import annotations

import copy

import pytest

from recipekit import frozen_prefix

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture()
def lora_on_top(tiny_model):
    """A 4-layer random Llama with LoRA in its top 2 layers, and an unhooked copy to compare with."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from recipekit import models

    config = AutoConfig.from_pretrained(models.resolve(tiny_model), num_hidden_layers=4)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=LINEARS, layers_to_transform=[2, 3], init_lora_weights=False)
    model = get_peft_model(base, lora)
    return model, copy.deepcopy(model)


def packed(*documents: list[int]) -> dict:
    """One padding-free row, as TRL's collator builds it: positions restart at each document."""
    import torch

    ids = [token for document in documents for token in document]
    positions = [position for document in documents for position in range(len(document))]
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]), "use_cache": False}


def bottom_layer_runs(model) -> list[int]:
    """A counter of the bottom layer's real computations (its MLP's forward runs only when the layer's does)."""
    runs = [0]
    layers = model.get_base_model().model.layers
    layers[0].mlp.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


def loss_and_grads(model, batch):
    model.zero_grad()
    logits = model(**batch).logits
    logits.float().square().mean().backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}
    return logits.detach(), grads


def assert_same(got, expected):
    import torch

    (logits, grads), (expected_logits, expected_grads) = got, expected
    torch.testing.assert_close(logits, expected_logits)
    assert grads.keys() == expected_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], msg=name)


A, B, C = [5, 17, 42, 8, 99, 3], [7, 7, 61, 2], [11, 12, 13, 14, 15]


def test_documents_seen_before_skip_the_frozen_layers_with_the_same_logits_and_grads(lora_on_top):
    model, reference = lora_on_top
    cache = frozen_prefix.reuse_frozen_prefix(model)
    assert cache is not None and cache.depth == 2
    runs = bottom_layer_runs(model)

    assert_same(loss_and_grads(model, packed(A, B)), loss_and_grads(reference, packed(A, B)))
    assert (runs[0], cache.hits, cache.misses) == (1, 0, 1)
    # Packed the other way round (as a later epoch shuffles them): both documents come from the cache.
    assert_same(loss_and_grads(model, packed(B, A)), loss_and_grads(reference, packed(B, A)))
    assert (runs[0], cache.hits, cache.misses) == (1, 1, 1)
    # One new document: the whole row is computed, and the new document kept.
    assert_same(loss_and_grads(model, packed(C, A)), loss_and_grads(reference, packed(C, A)))
    assert (runs[0], len(cache.outputs)) == (2, 3)


def test_generation_and_padded_batches_run_every_layer(lora_on_top):
    import torch

    model, reference = lora_on_top
    cache = frozen_prefix.reuse_frozen_prefix(model)
    runs = bottom_layer_runs(model)
    model(**packed(A))
    with_cache = {**packed(A), "use_cache": True}
    padded = {**packed(A), "attention_mask": torch.ones(1, len(A), dtype=torch.long)}
    for batch in (with_cache, padded):
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits)
    assert (runs[0], cache.hits) == (3, 0)
    generated = model.generate(torch.tensor([A]), max_new_tokens=3, do_sample=False)
    assert torch.equal(generated, reference.generate(torch.tensor([A]), max_new_tokens=3, do_sample=False))
    assert cache.hits == 0


def test_a_frozen_weight_changed_in_place_empties_the_cache(lora_on_top):
    import torch

    model, reference = lora_on_top
    cache = frozen_prefix.reuse_frozen_prefix(model)
    model(**packed(A, B))
    for net in (model, reference):
        with torch.no_grad():
            net.get_base_model().model.layers[1].mlp.up_proj.weight.mul_(1.5)
    torch.testing.assert_close(model(**packed(A, B)).logits, reference(**packed(A, B)).logits)
    assert (cache.hits, cache.misses) == (0, 2)


def test_a_document_is_kept_only_within_the_byte_budget(lora_on_top):
    model, _ = lora_on_top
    hidden = model.config.hidden_size
    cache = frozen_prefix.reuse_frozen_prefix(model, max_bytes=4 * hidden * (len(A) + len(B)))  # float32
    model(**packed(A, B, C))
    assert len(cache.outputs) == 2 and cache.stored_bytes <= cache.max_bytes


def test_nothing_is_attached_where_outputs_could_differ(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from recipekit import models

    config = AutoConfig.from_pretrained(models.resolve(tiny_model), num_hidden_layers=4)
    full = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert frozen_prefix.reuse_frozen_prefix(full) is None  # every layer trains
    everywhere = get_peft_model(copy.deepcopy(full), LoraConfig(r=4, target_modules=LINEARS))
    assert frozen_prefix.reuse_frozen_prefix(everywhere) is None  # adapters from the bottom layer up
    config.attention_dropout = 0.1
    dropout = get_peft_model(AutoModelForCausalLM.from_config(config),
                             LoraConfig(r=4, target_modules=LINEARS, layers_to_transform=[3]))
    assert frozen_prefix.reuse_frozen_prefix(dropout) is None


@pytest.mark.parametrize("reentrant", [False, True])
def test_reused_outputs_under_gradient_checkpointing_give_the_same_grads(lora_on_top, reentrant):
    """As peft sets it up: the embeddings' output requires grad, and every layer is recomputed in the backward."""
    model, reference = lora_on_top
    for net in (model, reference):
        net.train()
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        net.enable_input_require_grads()
    cache = frozen_prefix.reuse_frozen_prefix(model)
    for batch in (packed(A, B), packed(B, A)):
        assert_same(loss_and_grads(model, batch), loss_and_grads(reference, batch))
    assert (cache.hits, cache.misses) == (1, 1)
