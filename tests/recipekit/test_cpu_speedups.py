"""recipekit.cpu_speedups: each CPU path gives the numbers of the stock code it replaces, runs where it should,
and still finds the private API of transformers, TRL or torch it leans on."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest

from recipekit import cpu_speedups
from tests.conftest import REPO


@pytest.fixture
def tiny(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from recipekit import models

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model), attn_implementation="sdpa",
                                                dtype=torch.float32)


@pytest.fixture
def stock_sdpa(monkeypatch):
    """Put the stock SDPA back after the test (use_document_attention changes it process-wide)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", sdpa_attention_forward)


def packed_batch(lengths=(7, 12, 5), vocab=1000):
    """One padding-free row of three documents, as TRL's packing collator builds it."""
    import torch

    ids = torch.randint(3, vocab, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    start = 0
    for n in lengths:  # the first half of each document is prompt
        labels[0, start:start + n // 2] = -100
        start += n
    return {"input_ids": ids, "position_ids": positions, "use_cache": False}, labels  # as TRL's trainer calls it


def packed_mask(lengths):
    """Position ids of one padding-free row of documents of ``lengths``, and the block mask transformers builds for it."""
    import torch

    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return positions, (document[:, None] == document[None, :]).tril()[None, None]


def forward_and_grads(model, inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    (logits.float() ** 2).mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.fixture
def any_row_length(monkeypatch):
    """Per-document attention on rows of any length, so that the tiny batches here take it."""
    monkeypatch.setattr(cpu_speedups, "DOCUMENT_ATTENTION_MIN_ROW", 0)


@pytest.mark.parametrize("lengths, padded", [((4, 5, 3, 4, 5, 3), True), ((7, 12, 5), False)])
def test_document_attention_matches_the_packed_mask(tiny, stock_sdpa, any_row_length, lengths, padded):
    """Short documents attend as one padded batch, the others one SDPA call each: both give the block
    mask's logits and gradients, with the tiny model's grouped key/value heads (4 query heads, 2 kv heads)."""
    import torch
    from transformers import AttentionInterface

    inputs, _ = packed_batch(lengths)
    stock_logits, stock_grads = forward_and_grads(tiny, inputs)
    cpu_speedups.use_document_attention()
    logits, grads = forward_and_grads(tiny, inputs)

    bounds, layout = AttentionInterface._global_mapping["sdpa"]._last[2:]
    assert bounds == [0, *torch.tensor(lengths).cumsum(0).tolist()]  # a per-document path ran
    assert layout.pays() is padded
    assert torch.allclose(logits, stock_logits, atol=1e-5)
    assert len(grads) == len(stock_grads) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, stock_grads))

    # The other tokens of a document really are invisible: changing document 1 leaves the others alone.
    first = lengths[0]
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][0, :first] = 3
    assert torch.allclose(tiny(**changed).logits[0, first:], logits[0, first:], atol=1e-5)
    assert not torch.allclose(tiny(**changed).logits[0, :first], logits[0, :first], atol=1e-3)


def test_padded_documents_keep_float32_scores_under_bf16_autocast():
    """As the CPU flash kernel does: with large scores, rounding them to bf16 (what autocast would do to
    the matmul) moves the softmax weights by percents; float32 scores leave only the output's rounding."""
    import torch

    lengths = [9, 14, 6, 11, 8]
    positions, mask = packed_mask(lengths)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, positions.shape[1], 16).mul(scale).bfloat16()
               for heads, scale in ((6, 6.0), (2, 6.0), (2, 1.0)))
    layout = cpu_speedups.PaddedDocuments(cpu_speedups.document_bounds(positions[0]))
    assert layout.pays() and (layout.count, layout.width) == (5, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layout.attend(q, k, v, scaling=None)
    exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                             enable_gqa=True).transpose(1, 2)
    rounded_scores = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=(q.float() @ k.float().repeat_interleave(3, 1).transpose(-1, -2)
                                                    / 4).bfloat16().float().masked_fill(~mask, float("-inf"))
        - q.float() @ k.float().repeat_interleave(3, 1).transpose(-1, -2) / 4, enable_gqa=True).transpose(1, 2)
    assert got.dtype == torch.bfloat16
    assert (got.float() - exact).abs().max() < 0.02  # bf16 output and weights
    assert (rounded_scores - exact).abs().max() > 0.05  # what rounded scores would cost: this test would see it


def test_document_attention_takes_the_padded_batch_the_loop_or_the_stock_sdpa(monkeypatch):
    import torch

    calls = []

    def stock(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape[2])
        return query.transpose(1, 2), None

    def one_layer(attention, lengths):
        positions, mask = packed_mask(lengths)
        q = torch.randn(1, 2, positions.shape[1], 4)
        attention(SimpleNamespace(num_key_value_groups=1), q, q, q, mask, position_ids=positions)
        return attention._last[3]

    monkeypatch.setattr(cpu_speedups, "DOCUMENT_ATTENTION_MIN_ROW", 20)
    attention = cpu_speedups.DocumentAttention(stock)
    assert one_layer(attention, [3] * 6).pays() and calls == []  # short documents: one padded batch
    # One long document among short ones: padding them all to its length would cost more than the mask.
    assert not one_layer(attention, [12, 2, 2]).pays() and calls == [16]  # below the loop's threshold: stock
    assert not one_layer(attention, [16, 2, 2]).pays() and calls == [16]  # 20 tokens: one call per document
    monkeypatch.setattr(cpu_speedups, "DOCUMENT_ATTENTION_MIN_ROW", 21)  # read at every call
    one_layer(attention, [16, 2, 2])
    assert calls == [16, 20]
    one_layer(cpu_speedups.DocumentAttention(stock, min_row_length=0), [12, 2, 2])
    assert calls == [16, 20]  # its own threshold (0) overrides the module's
    monkeypatch.setattr(cpu_speedups, "PADDED_DOCUMENT_MAX", 2)  # documents longer than this are not padded
    assert not one_layer(attention, [3] * 6).pays() and calls == [16, 20, 18]
    monkeypatch.setattr(cpu_speedups, "PADDED_DOCUMENT_MAX", 256)
    positions, mask = packed_mask([3] * 6)
    q = torch.randn(1, 2, 18, 4)
    attention(SimpleNamespace(num_key_value_groups=1), q, q, q, mask, position_ids=positions, dropout=0.1)
    assert attention._last[3].pays() and calls == [16, 20, 18, 18]  # attention dropout: the stock SDPA


def test_document_attention_leaves_padded_batches_and_generation_alone(tiny, stock_sdpa):
    import torch

    ids = torch.randint(3, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    stock = tiny(input_ids=ids, attention_mask=mask).logits
    stock_reply = tiny.generate(ids[:1], max_new_tokens=4, do_sample=False)
    cpu_speedups.use_document_attention()
    assert torch.allclose(tiny(input_ids=ids, attention_mask=mask).logits, stock, atol=1e-6)
    assert torch.equal(tiny.generate(ids[:1], max_new_tokens=4, do_sample=False), stock_reply)


@pytest.mark.parametrize("num_items", [None, 11])
def test_loss_on_trained_positions_matches_the_model_loss(tiny, num_items):
    import torch

    inputs, labels = packed_batch()
    n = None if num_items is None else torch.tensor(num_items)
    tiny.zero_grad()
    expected = tiny(**inputs, labels=labels, num_items_in_batch=n).loss
    expected.backward()
    expected_grads = [p.grad.clone() for p in tiny.parameters()]

    trainer = SimpleNamespace(model_accepts_loss_kwargs=True, args=SimpleNamespace(average_tokens_across_devices=False))
    tiny.zero_grad()
    loss = cpu_speedups.PlainLossOnCPUMixin._loss_on_trained_positions(trainer, tiny, {**inputs, "labels": labels}, n)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(tiny.parameters(), expected_grads))


# --- frozen_prefix ------------------------------------------------------------------------------------------

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
    cache = cpu_speedups.reuse_frozen_prefix(model)
    assert cache is not None and cache.depth == 2
    runs = bottom_layer_runs(model)

    assert_same(loss_and_grads(model, packed(A, B)), loss_and_grads(reference, packed(A, B)))
    assert (runs[0], cache.hits, cache.misses) == (1, 0, 1)
    assert not cache._disabled  # the decoder layers still return a tensor, which it keeps
    # Packed the other way round (as a later epoch shuffles them): both documents come from the cache.
    assert_same(loss_and_grads(model, packed(B, A)), loss_and_grads(reference, packed(B, A)))
    assert (runs[0], cache.hits, cache.misses) == (1, 1, 1)
    # One new document: the whole row is computed, and the new document kept.
    assert_same(loss_and_grads(model, packed(C, A)), loss_and_grads(reference, packed(C, A)))
    assert (runs[0], len(cache.outputs)) == (2, 3)


def test_generation_and_padded_batches_run_every_layer(lora_on_top):
    import torch

    model, reference = lora_on_top
    cache = cpu_speedups.reuse_frozen_prefix(model)
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
    cache = cpu_speedups.reuse_frozen_prefix(model)
    model(**packed(A, B))
    for net in (model, reference):
        with torch.no_grad():
            net.get_base_model().model.layers[1].mlp.up_proj.weight.mul_(1.5)
    torch.testing.assert_close(model(**packed(A, B)).logits, reference(**packed(A, B)).logits)
    assert (cache.hits, cache.misses) == (0, 2)


def test_a_document_is_kept_only_within_the_byte_budget(lora_on_top):
    model, _ = lora_on_top
    hidden = model.config.hidden_size
    cache = cpu_speedups.reuse_frozen_prefix(model, max_bytes=4 * hidden * (len(A) + len(B)))  # float32
    model(**packed(A, B, C))
    assert len(cache.outputs) == 2 and cache.stored_bytes <= cache.max_bytes


def test_nothing_is_attached_where_outputs_could_differ(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from recipekit import models

    config = AutoConfig.from_pretrained(models.resolve(tiny_model), num_hidden_layers=4)
    full = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert cpu_speedups.reuse_frozen_prefix(full) is None  # every layer trains
    everywhere = get_peft_model(copy.deepcopy(full), LoraConfig(r=4, target_modules=LINEARS))
    assert cpu_speedups.reuse_frozen_prefix(everywhere) is None  # adapters from the bottom layer up
    config.attention_dropout = 0.1
    dropout = get_peft_model(AutoModelForCausalLM.from_config(config),
                             LoraConfig(r=4, target_modules=LINEARS, layers_to_transform=[3]))
    assert cpu_speedups.reuse_frozen_prefix(dropout) is None


@pytest.mark.parametrize("reentrant", [False, True])
def test_reused_outputs_under_gradient_checkpointing_give_the_same_grads(lora_on_top, reentrant):
    """As peft sets it up: the embeddings' output requires grad, and every layer is recomputed in the backward."""
    model, reference = lora_on_top
    for net in (model, reference):
        net.train()
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        net.enable_input_require_grads()
    cache = cpu_speedups.reuse_frozen_prefix(model)
    for batch in (packed(A, B), packed(B, A)):
        assert_same(loss_and_grads(model, batch), loss_and_grads(reference, batch))
    assert (cache.hits, cache.misses) == (1, 1)


# --- frozen_weight_copies, fused_lora -----------------------------------------------------------------------------

@pytest.fixture()
def lora_everywhere(tiny_model):
    """A 2-layer random Llama with LoRA on every linear layer (non-zero B, so the update counts)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from recipekit import models

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model), dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LINEARS, init_lora_weights=False))


def bf16_loss_and_grads(model, batch):
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        return loss_and_grads(model, batch)


def test_frozen_weight_copies_give_autocasts_numbers_cast_once_and_recast_after_a_change(lora_everywhere):
    import torch

    model, batch = lora_everywhere, packed(A, B)
    expected = bf16_loss_and_grads(model, batch)
    copies = cpu_speedups.FrozenWeightCopies(model)
    frozen = [m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad]
    assert copies.modules == frozen and len(frozen) == 7 * 2 + 1  # every base layer, and the (tied) LM head
    copies.install()
    got = bf16_loss_and_grads(model, batch)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)  # the very same rounding
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name], rtol=0, atol=0)
    kept = {key: value[2] for key, value in copies.copies.items()}
    assert len(kept) == len(frozen) and all(c.dtype == torch.bfloat16 for c in kept.values())
    bf16_loss_and_grads(model, batch)
    assert all(copies.copies[key][2] is copy for key, copy in kept.items())  # reused, not cast again

    up = model.get_base_model().model.layers[1].mlp.up_proj.base_layer
    with torch.no_grad():
        up.weight.mul_(1.5)  # in place: its copy is stale
    copies.remove()
    changed = bf16_loss_and_grads(model, batch)
    copies.install()
    torch.testing.assert_close(bf16_loss_and_grads(model, batch)[0], changed[0], rtol=0, atol=0)
    assert copies.copies[id(up)][2] is not kept[id(up)]

    copies.remove()
    assert not copies.copies and not any("forward" in vars(m) for m in frozen)
    with torch.no_grad():  # outside autocast the float32 weights themselves, and nothing is kept
        stock = model(**batch).logits
        copies.install()
        torch.testing.assert_close(model(**batch).logits, stock, rtol=0, atol=0)
        assert stock.dtype == torch.float32 and not copies.copies


def test_frozen_weight_copies_stop_at_the_byte_budget_and_the_rest_are_cast_per_call(lora_everywhere):
    import torch

    model, batch = lora_everywhere, packed(A, B)
    expected = bf16_loss_and_grads(model, batch)[0]
    hidden = model.config.hidden_size
    copies = cpu_speedups.FrozenWeightCopies(model, max_bytes=2 * hidden * hidden * 2)  # two q_proj-sized copies
    copies.install()
    torch.testing.assert_close(bf16_loss_and_grads(model, batch)[0], expected, rtol=0, atol=0)
    assert 0 < len(copies.copies) < len(copies.modules) and copies.stored_bytes <= copies.max_bytes


def needs_packed_weights():
    import torch

    if not cpu_speedups.packs_weights(torch.bfloat16):
        pytest.skip("this CPU or torch build has no oneDNN bf16 linear")


def test_packed_frozen_weights_give_the_kept_copies_numbers_packed_once_and_again_after_a_change(lora_everywhere):
    import torch

    needs_packed_weights()
    model, batch = lora_everywhere, packed(A, B)
    plain = cpu_speedups.FrozenWeightCopies(model)
    plain.install()
    expected = bf16_loss_and_grads(model, batch)
    plain_bytes = plain.stored_bytes
    plain.remove()
    copies = cpu_speedups.FrozenWeightCopies(model, packed=True)
    copies.install()
    got = bf16_loss_and_grads(model, batch)
    # The same bf16 products in another blocked order: close, not always bit for bit.
    torch.testing.assert_close(got[0], expected[0], rtol=1e-2, atol=1e-2)
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name], rtol=2e-2, atol=1e-3, msg=name)
    assert all(g.abs().sum() > 0 for g in got[1].values())  # the gradient reaches the adapters below
    kept = {key: value[2] for key, value in copies.copies.items()}
    assert len(kept) == len(copies.modules) and copies.stored_bytes == 2 * plain_bytes  # the weight and its transpose
    assert all(isinstance(pair, tuple) and all(w.is_mkldnn for w in pair) for pair in kept.values())
    bf16_loss_and_grads(model, batch)
    assert all(copies.copies[key][2] is pair for key, pair in kept.items())  # reused, not packed again

    up = model.get_base_model().model.layers[1].mlp.up_proj.base_layer
    with torch.no_grad():
        up.weight.mul_(1.5)
    copies.remove()
    changed = bf16_loss_and_grads(model, batch)
    copies.install()
    torch.testing.assert_close(bf16_loss_and_grads(model, batch)[0], changed[0], rtol=1e-2, atol=1e-2)
    assert copies.copies[id(up)][2] is not kept[id(up)]
    copies.remove()


def test_a_packed_frozen_weight_with_a_bias_gives_autocasts_output_and_input_gradient():
    import torch

    needs_packed_weights()
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24).requires_grad_(False)
    x = torch.randn(2, 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(x)
    expected_grad, = torch.autograd.grad(expected.float().square().sum(), x)
    copies = cpu_speedups.FrozenWeightCopies(torch.nn.Sequential(layer), packed=True)
    copies.install()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    got_grad, = torch.autograd.grad(got.float().square().sum(), x)
    assert got.dtype == expected.dtype == torch.bfloat16 and got_grad.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got_grad, expected_grad, rtol=2e-2, atol=2e-2)
    assert isinstance(copies.copies[id(layer)][2], tuple)
    copies.remove()


def test_packed_copies_past_the_byte_budget_give_way_to_plain_copies_then_to_casts_per_call(lora_everywhere):
    import torch

    needs_packed_weights()
    model, batch = lora_everywhere, packed(A, B)
    expected = bf16_loss_and_grads(model, batch)[0]
    hidden = model.config.hidden_size
    # Room for q_proj's pair and a bit more: k_proj (half q_proj's size here) only fits as a plain copy.
    copies = cpu_speedups.FrozenWeightCopies(model, max_bytes=int(2.75 * hidden * hidden * 2), packed=True)
    copies.install()
    torch.testing.assert_close(bf16_loss_and_grads(model, batch)[0], expected, rtol=1e-2, atol=1e-2)
    kinds = [isinstance(kept[2], tuple) for kept in copies.copies.values()]
    assert kinds == [True, False]  # q_proj packed with its transpose, k_proj plain, no room for more
    assert copies.stored_bytes <= copies.max_bytes < sum(m.weight.numel() * 2 for m in copies.modules)


def test_training_packs_the_kept_copies_unless_that_path_is_switched_off(lora_everywhere, monkeypatch, caplog):
    import torch

    needs_packed_weights()
    model, batch = lora_everywhere, packed(A, B)
    for switched_off, packs in ((set(), 15), ({"packed_frozen_weights"}, 0)):
        monkeypatch.setattr(cpu_speedups, "switched_off", switched_off)
        trainer = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu")), model=model,
                                  train=lambda: bf16_loss_and_grads(model, batch))
        cpu_speedups.speed_up_training(trainer)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="recipekit.cpu_speedups"):
            trainer.train()
        line, = [r.getMessage() for r in caplog.records if "frozen weights cast once" in r.getMessage()]
        assert line.startswith("frozen weights cast once for all of training: 15 Linear layers")
        assert (f"({packs} packed for oneDNN, with their transposes)" in line) == bool(packs), line


def test_fused_lora_matches_pefts_forward_within_bf16_rounding_and_runs_instead_of_it(lora_everywhere, monkeypatch):
    import torch
    from peft.tuners.lora.layer import Linear

    model, batch = lora_everywhere, packed(A, B, C)
    expected = bf16_loss_and_grads(model, batch)
    fused = cpu_speedups.FusedLora(model)
    assert len(fused.modules) == 7 * 2
    peft_calls = []
    peft_forward = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, *a, **k: peft_calls.append(1) or peft_forward(self, *a, **k))
    fused.install()
    got = bf16_loss_and_grads(model, batch)
    assert peft_calls == [] and len(fused.used) == len(fused.modules)  # every adapted layer took the fused path
    # The update is added inside one matmul and rounded once, not three times: bf16-close, not equal.
    torch.testing.assert_close(got[0], expected[0], rtol=2e-2, atol=2e-2)
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name], rtol=5e-2, atol=1e-3, msg=name)
        # Against PEFT's float32 LoRA path, up to 13% of a gradient's largest entry here; leaving lora_A's share
        # of the input gradient out moves some by over 100%, which the element-wise tolerance above lets through.
        assert (got[1][name] - expected[1][name]).abs().max() <= 0.3 * expected[1][name].abs().max(), name
    assert all(g.abs().sum() > 0 for g in got[1].values())  # lora_A and lora_B both get gradients

    with torch.no_grad():
        model(**batch)  # float32, no autocast: PEFT's own forward
    assert len(peft_calls) == len(fused.modules)
    model.merge_adapter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch)  # merged adapters: PEFT's own forward
    assert len(peft_calls) == 2 * len(fused.modules)
    fused.remove()
    assert not any("forward" in vars(m) for m in fused.modules) and not fused.used


def test_fused_lora_over_packed_weights_is_one_function_with_the_same_numbers(lora_everywhere, monkeypatch):
    """Where the base weight is kept packed, the base matmul and LoRA's update are one autograd function, with the
    numbers of the packed base layer and LoRA's update as two functions: every adapter's gradient within bf16
    rounding of its largest entry (leaving out ``lora_A``'s share of the input gradient moves some by 100%)."""
    import torch

    needs_packed_weights()
    model, batch = lora_everywhere, packed(A, B, C)
    copies = cpu_speedups.FrozenWeightCopies(model, packed=True)
    copies.install()
    two_functions = cpu_speedups.FusedLora(model)
    two_functions.install()
    expected = bf16_loss_and_grads(model, batch)
    two_functions.remove()
    fused = cpu_speedups.FusedLora(model, copies)
    fused.install()
    applied = []
    function = cpu_speedups.packed_lora_linear()
    monkeypatch.setattr(function, "apply", lambda *a, apply=function.apply: applied.append(1) or apply(*a))
    got = bf16_loss_and_grads(model, batch)
    assert len(applied) == len(fused.modules) == len(fused.used)  # every adapted layer took the one function
    torch.testing.assert_close(got[0], expected[0], rtol=2e-2, atol=2e-2)
    for name, grad in expected[1].items():
        assert (got[1][name] - grad).abs().max() <= 0.05 * grad.abs().max(), name
    assert all(g.abs().sum() > 0 for g in got[1].values())
    fused.remove()
    copies.remove()


def test_fused_lora_casts_an_input_once_for_the_layers_that_read_it_in_turn(lora_everywhere):
    """q, k and v (gate and up) read the same normed input: one cast serves them all, and a changed input is cast
    again."""
    import torch

    fused = cpu_speedups.FusedLora(lora_everywhere)
    x = torch.randn(5, 8)
    first = fused._cast(x, torch.bfloat16)
    assert fused._cast(x, torch.bfloat16) is first and torch.equal(first, x.to(torch.bfloat16))
    x.add_(1)  # changed in place
    again = fused._cast(x, torch.bfloat16)
    assert again is not first and torch.equal(again, x.to(torch.bfloat16))
    assert fused._cast(x.clone(), torch.bfloat16) is not again  # another tensor with the same values
    bf16 = x.to(torch.bfloat16)
    assert fused._cast(bf16, torch.bfloat16) is bf16


def test_the_training_paths_are_installed_for_train_only_even_when_it_raises(lora_everywhere, monkeypatch):
    import torch

    model = lora_everywhere
    seen = []

    def train():
        seen.append(sorted(type(m.forward).__name__ for m in model.modules() if "forward" in vars(m)))
        raise RuntimeError("stopped")

    trainer = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu")),
                              model=model, train=train)
    cpu_speedups.speed_up_training(trainer)
    with pytest.raises(RuntimeError, match="stopped"):
        trainer.train()
    assert seen == [["partial"] * (15 + 14)]  # 14 base layers and the LM head (copies), 14 LoRA layers (fused)
    assert not any("forward" in vars(m) for m in model.modules())
    on_gpu = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cuda", 0)),
                             model=model, train=train)
    cpu_speedups.speed_up_training(on_gpu)
    assert on_gpu.train is train
    for path, count in (("fused_lora", 15), ("frozen_weight_copies", 14), ("heap_reuse", 15 + 14)):  # each alone
        seen.clear()
        monkeypatch.setattr(cpu_speedups, "switched_off", {path})
        trainer = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu")),
                                  model=model, train=train)
        cpu_speedups.speed_up_training(trainer)
        with pytest.raises(RuntimeError, match="stopped"):
            trainer.train()
        assert seen == [["partial"] * count]
    heap_only = {"fused_lora", "frozen_weight_copies"}
    bf16 = SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu"))
    for args, switched_off, model_paths in (
            (SimpleNamespace(bf16=False, fp16=False, device=torch.device("cpu")), set(), True),  # float32
            (bf16, heap_only, True),
            (bf16, set(), False)):  # a model inside DeepSpeed's engine
        monkeypatch.setattr(cpu_speedups, "switched_off", switched_off)
        seen.clear()
        heap_only_run = SimpleNamespace(args=args, model=model, train=train)
        cpu_speedups.speed_up_training(heap_only_run, model_paths=model_paths)
        assert heap_only_run.train is not train  # the heap is kept for reuse; no forward is replaced
        with pytest.raises(RuntimeError, match="stopped"):
            heap_only_run.train()
        assert seen == [[]]
    monkeypatch.setattr(cpu_speedups, "switched_off", heap_only | {"heap_reuse"})
    nothing_on = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu")),
                                 model=model, train=train)
    cpu_speedups.speed_up_training(nothing_on)
    assert nothing_on.train is train
    # The run's heap_reuse: false leaves the heap as it is and the other paths on.
    monkeypatch.setattr(cpu_speedups, "switched_off", set())
    heap_unwanted = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu")),
                                    model=model, train=train)
    monkeypatch.setattr(cpu_speedups, "HeapReuse", None)  # made only where wanted
    cpu_speedups.speed_up_training(heap_unwanted, reuse_heap=False)
    seen.clear()
    with pytest.raises(RuntimeError, match="stopped"):
        heap_unwanted.train()
    assert seen == [["partial"] * (15 + 14)]
    monkeypatch.setattr(cpu_speedups, "switched_off", heap_only)
    only_the_heap_unwanted = SimpleNamespace(args=SimpleNamespace(bf16=True, fp16=False, device=torch.device("cpu")),
                                             model=model, train=train)
    cpu_speedups.speed_up_training(only_the_heap_unwanted, reuse_heap=False)
    assert only_the_heap_unwanted.train is train


PAGE_FAULTS = """
import json, resource, torch
from recipekit import cpu_speedups

def page_faults(allocations=8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(allocations):
        torch.empty(48 * 2**20, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def reused_page_faults():
    # The fewest of 3 rounds: now and then a small allocation splits a freed block and the heap grows once more.
    return min(page_faults() for _ in range(3))

counts = {"stock": page_faults()}
"""


def fault_counts(steps: str) -> dict:
    """Minor page faults of 8 allocations of a 48 MiB tensor (``page_faults()``) at the points ``steps`` records in
    ``counts``, in a fresh process: a heap that earlier tests in this one left with large free blocks could serve
    them without faults whatever malloc's settings."""
    import json
    import subprocess
    import sys
    import textwrap

    script = PAGE_FAULTS + textwrap.dedent(steps) + "\nprint(json.dumps(counts))\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_heap_reuse_stops_large_blocks_being_faulted_in_afresh_at_every_allocation():
    """A 48 MiB tensor made again and again: with glibc's defaults each one is a fresh mmap whose pages the
    kernel faults in (and zeroes) one by one; while HeapReuse is installed the freed block is reused, and
    once it is removed the defaults are back."""
    assert cpu_speedups.glibc() is not None  # the image and CI run Debian
    counts = fault_counts("""
        heap = cpu_speedups.HeapReuse()
        counts["installed"] = heap.install()
        try:
            page_faults()  # the heap grows until freed blocks fit the next aligned request
            counts["reused"] = reused_page_faults()
        finally:
            heap.remove()
        counts["restored"] = page_faults()
    """)
    assert counts["installed"]
    assert counts["stock"] >= 8 and counts["restored"] >= 8  # a fault per allocation, even with huge pages
    assert counts["reused"] * 10 < counts["stock"] and counts["reused"] * 10 < counts["restored"]


def test_a_hand_written_loop_keeps_the_heap_for_reuse_and_gives_it_back_when_it_raises():
    counts = fault_counts("""
        try:
            with cpu_speedups.heap_kept_for_reuse(torch.device("cpu")):
                page_faults()
                counts["reused"] = reused_page_faults()
                raise RuntimeError("stopped")
        except RuntimeError:
            counts["restored"] = page_faults()  # glibc's defaults are back after the raise
    """)
    assert counts["stock"] >= 8 and counts["reused"] * 10 < counts["stock"]
    assert counts["restored"] > 10 * counts["reused"]


@pytest.mark.parametrize(("device", "switched_off", "wanted"),
                         [("cuda", set(), True), ("cpu", {"heap_reuse"}, True), ("cpu", set(), False)])
def test_a_hand_written_loop_keeps_glibcs_defaults_off_the_cpu_switched_off_or_unwanted(device, switched_off, wanted):
    """Unwanted: the run's ``heap_reuse: false``."""
    counts = fault_counts(f"""
        cpu_speedups.switched_off.update({switched_off!r})
        with cpu_speedups.heap_kept_for_reuse(torch.device({device!r}), wanted={wanted!r}):
            page_faults()
            counts["inside"] = page_faults()
    """)
    assert counts["stock"] >= 8 and counts["inside"] >= 8  # a fault per allocation, as outside


# --- the switch and the private API each path leans on -----------------------------------------------------------

def test_every_path_runs_on_cpu_only_and_can_be_switched_off(monkeypatch):
    import torch

    assert all(cpu_speedups.enabled(path, torch.device("cpu")) for path in cpu_speedups.PATHS)
    assert not any(cpu_speedups.enabled(path, torch.device("cuda", 0)) for path in cpu_speedups.PATHS)
    monkeypatch.setattr(cpu_speedups, "switched_off", {"document_attention"})
    assert not cpu_speedups.enabled("document_attention", "cpu") and cpu_speedups.enabled("plain_loss", "cpu")
    with pytest.raises(ValueError, match="unknown CPU speed path"):
        cpu_speedups.enabled("plain-loss", "cpu")


def test_switched_off_document_attention_leaves_the_stock_sdpa(stock_sdpa, monkeypatch):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setattr(cpu_speedups, "switched_off", {"document_attention"})
    cpu_speedups.use_document_attention()
    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward


def test_the_private_api_the_paths_call_is_where_they_expect_it():
    import inspect

    import torch
    from transformers import Trainer
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward  # noqa: F401
    from transformers.loss.loss_utils import fixed_cross_entropy
    from trl.trainer.utils import FusedCausalLMOutput

    assert list(inspect.signature(fixed_cross_entropy).parameters)[:4] == [
        "source", "target", "num_items_in_batch", "ignore_index"]
    assert list(inspect.signature(Trainer.compute_loss).parameters) == [
        "self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert {"loss", "log_probs", "entropy", "mean_logits", "is_top1", "label_mask"} <= set(
        FusedCausalLMOutput.__dataclass_fields__)
    weight = torch.zeros(3)
    version = weight._version  # frozen_prefix's test for a frozen weight changed in place
    weight.add_(1)
    assert weight._version > version
    if torch.backends.mkldnn.is_available():  # packed_frozen_weights: oneDNN's packed linear, where torch has oneDNN
        for op in ("_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported"):
            assert hasattr(torch.ops.mkldnn, op), op
    # document_attention's padded batch: the softmax backward it calls, and the oneDNN setting it sets and restores
    weights = torch.softmax(torch.randn(2, 3), -1)
    assert torch._softmax_backward_data(torch.ones(2, 3), weights, -1, torch.float32).abs().max() < 1e-6
    before = torch.backends.mkldnn.matmul.fp32_precision
    with cpu_speedups.onednn_float32_matmuls():
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@pytest.fixture(scope="module")
def sft_batch(tiny_model, tmp_path_factory):
    """A real SFTTrainer on the tiny model (packed chat rows, as the sft recipe trains) and one training batch."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from recipekit import models

    class Trainer(cpu_speedups.PlainLossOnCPUMixin, SFTTrainer):
        pass

    path = models.resolve(tiny_model)
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: is there a pool on floor {i}?"}],
             "completion": [{"role": "assistant", "content": f"Yes, on floor {i}, open from {i} am."}]}
            for i in range(4)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), per_device_train_batch_size=4, packing=True,
                     max_length=256, use_cpu=True, report_to=[], bf16=False)
    trainer = Trainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(path),
                      train_dataset=Dataset.from_list(rows))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, batch


def test_the_plain_loss_equals_trls_own_on_a_real_sft_batch(sft_batch, monkeypatch):
    """TRL's collator still sends what the plain loss reads (position_ids of packed rows, labels, the
    completion mask), the trainer still has the attributes it asks, and the three ways agree."""
    import torch

    trainer, batch = sft_batch
    assert {"input_ids", "position_ids", "labels"} <= set(batch)
    assert batch["input_ids"].shape[0] == 1 and len(cpu_speedups.document_bounds(batch["position_ids"][0])) == 5
    n = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    plain = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
    monkeypatch.setattr(cpu_speedups, "switched_off", {"trained_positions"})
    every_position = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
    monkeypatch.setattr(cpu_speedups, "switched_off", {"plain_loss"})
    trls = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
    assert torch.allclose(plain, every_position, atol=1e-5) and torch.allclose(plain, trls, atol=1e-4)


def test_plain_lm_head_answers_trls_fused_calls_with_the_same_numbers(tiny):
    import torch
    from trl.trainer.utils import add_fused_lm_head

    fields = ("log_probs", "entropy", "mean_logits", "is_top1")
    reference = copy.deepcopy(tiny)
    for model in (tiny, reference):
        add_fused_lm_head(model, outputs=fields)  # as TRL's DPOTrainer patches the policy and the reference
    cpu_speedups.plain_lm_head(tiny)
    ids = torch.randint(3, 1000, (2, 10))
    labels = ids.clone()
    labels[0, :4], labels[1, :6] = -100, -100  # the prompts
    ours = tiny(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
    theirs = reference(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
    for field in (*fields, "loss", "label_mask"):
        assert torch.allclose(getattr(ours, field).float(), getattr(theirs, field).float(), atol=1e-4), field
    assert torch.equal(tiny(input_ids=ids).logits, reference(input_ids=ids).logits)  # generation is untouched
