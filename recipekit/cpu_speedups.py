"""The CPU-only speed paths, each behind one switch (``enabled``), each giving the numbers of the stock
code it replaces, and each pinned by tests/recipekit/test_cpu_speedups.py to the private API of
transformers, TRL or torch it leans on, so an upgrade that moves that API fails a test, not a run.

- ``plain_loss`` (``PlainLossOnCPUMixin``): the SFT loss from the model's own forward instead of
  TRL's chunked log-prob kernel, whose backward is slow on CPU (on GPU the kernel saves memory).
  Leans on ``Trainer.compute_loss``'s signature and attributes and TRL's ``completion_mask``.
- ``trained_positions``: within it, the LM head only at positions whose next token is trained on
  (``fixed_cross_entropy``, ``logits_to_keep`` given as indices).
- ``document_attention`` (``DocumentAttention``): attention within each packed document instead of one
  row-long SDPA under a block-diagonal mask: short documents as one padded batch (``padded_attention``),
  longer ones one causal SDPA call each on rows of ``DOCUMENT_ATTENTION_MIN_ROW`` tokens or more
  (``AttentionInterface``, ``sdpa_attention_forward``, ``repeat_kv``, the attention kwargs carrying
  ``position_ids``, ``torch._softmax_backward_data``, ``torch.backends.mkldnn.matmul.fp32_precision``).
- ``frozen_prefix`` (``FrozenPrefixCache``): the frozen layers below the adapters computed once per
  document (``Tensor._version``, the decoder's forward kwargs, decoder layers returning a tensor).
- ``plain_lm_head``: dpo's ``fused_lm_head=True`` calls answered from the model's own logits of the
  scored positions (TRL's ``add_fused_lm_head`` calling convention and ``FusedCausalLMOutput``).
- ``cached_weight_casts``: frozen float32 weights cast once per autocast region in generation.
- ``frozen_weight_copies`` (``FrozenWeightCopies``): in training, frozen float32 Linear weights (a LoRA
  base) kept cast to the autocast dtype instead of cast at every forward (``torch.get_autocast_dtype``,
  ``Tensor._version``).
- ``packed_frozen_weights``: within it, each kept bf16 copy held twice in oneDNN's blocked layout (one for the
  forward, one transposed for the gradient to the input) and multiplied with ``torch.ops.mkldnn._linear_pointwise``
  (``_reorder_linear_weight``, ``_is_mkldnn_bf16_supported``), which skips the per-call reorder of a plain weight.
- ``fused_lora`` (``FusedLora``): in training, a LoRA Linear's update added by one ``addmm`` with the scaling
  folded into ``lora_B``, in one autograd function with the base matmul where its weight is kept packed, and an
  input cast to the autocast dtype once for the layers that read it (PEFT's ``LoraLayer`` attributes:
  ``lora_A``, ``lora_B``, ``lora_dropout``, ``scaling``, ``lora_variant``, ``merged``, ``disable_adapters``).
- ``heap_reuse`` (``HeapReuse``): in training (a Trainer's through ``speed_up_training``, a hand-written loop's
  through ``heap_kept_for_reuse``), glibc's malloc keeps freed memory for reuse instead of unmapping it
  (``mallopt``'s ``M_MMAP_MAX`` and ``M_TRIM_THRESHOLD``, ``malloc_trim``; glibc only).

docs/benchmarks.md has what each path measured.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from typing import Any

from recipekit.data import IGNORE_INDEX

log = logging.getLogger(__name__)
PATHS = ("plain_loss", "trained_positions", "document_attention", "frozen_prefix", "plain_lm_head",
         "cached_weight_casts", "frozen_weight_copies", "packed_frozen_weights", "fused_lora", "heap_reuse")
switched_off: set[str] = set()  # the benchmark's ablation rows switch single paths off (bench/ours.py)


def enabled(path: str, device) -> bool:
    """The one switch: ``path`` runs on a CPU device, unless switched off."""
    if path not in PATHS:
        raise ValueError(f"unknown CPU speed path {path!r}; one of {', '.join(PATHS)}")
    return getattr(device, "type", device) == "cpu" and path not in switched_off


# --- plain_loss, trained_positions ---------------------------------------------------------------------------

class PlainLossOnCPUMixin:
    """Mix into a TRL trainer: on CPU, compute the loss with the model's own forward, and the LM head
    only at positions whose next token is trained on (the replies, not the prompts): the same loss,
    with the vocabulary-sized matmul shrunk to those rows."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from transformers import Trainer

        if not enabled("plain_loss", self.args.device):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # use_cache=False as TRL sets it: with a cache, transformers skips the packed-documents mask and
        # every token of a packed row would attend to the documents before it.
        inputs = {**{k: v for k, v in inputs.items() if k != "completion_mask"}, "use_cache": False}
        if return_outputs or inputs.get("labels") is None or self.label_smoother is not None \
                or self.compute_loss_func is not None or not enabled("trained_positions", self.args.device):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return self._loss_on_trained_positions(model, inputs, num_items_in_batch)

    def _loss_on_trained_positions(self, model, inputs, num_items_in_batch):
        """Trainer.compute_loss's causal-LM loss, computing logits only where a label follows."""
        import torch
        from transformers.loss.loss_utils import fixed_cross_entropy

        labels = inputs.pop("labels")
        targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]  # as ForCausalLMLoss shifts
        keep = torch.nonzero((targets != IGNORE_INDEX).any(dim=0)).flatten()
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits.float()
        per_item = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = fixed_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1), per_item)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and per_item is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss


# --- document_attention ------------------------------------------------------------------------------------------

def document_bounds(positions) -> list[int]:
    """Start offsets of the packed documents in one row of position ids, plus the row length. A
    document starts where the positions stop counting up by one: the rule transformers' packed-sequence
    mask follows."""
    import torch

    restarts = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return [0, *restarts.tolist(), positions.numel()]


# The per-document loop (one SDPA call per document and layer) only on rows this long (in tokens, the whole
# padding-free row of a micro-batch): on shorter ones the calls cost more than the masked-out blocks they save
# (docs/benchmarks.md, `python -m bench.attention`). Rows of short documents take the padded batch instead.
DOCUMENT_ATTENTION_MIN_ROW = 1024
# The padded batch only for documents up to this long: past it, its float32 scores outgrow the caches and the
# loop's calls are few enough to pay.
PADDED_DOCUMENT_MAX = 256


class PaddedDocuments:
    """How a packed row's documents are laid out as a padded batch of ``count`` documents of ``width``
    positions: ``positions`` (the row position at each batch position; padding repeats the document's first,
    whose values never reach a real position, see ``padded_attention``), ``padding`` (where it is padding),
    and each row position's ``document`` and ``offset`` in it."""

    def __init__(self, bounds: list[int]):
        import torch

        lengths = [end - start for start, end in zip(bounds, bounds[1:])]
        self.length, self.count, self.width = bounds[-1], len(lengths), max(lengths)
        self.positions = torch.empty(self.count, self.width, dtype=torch.long)
        self.padding = torch.ones(self.count, self.width, dtype=torch.bool)
        self.document = torch.repeat_interleave(torch.arange(self.count), torch.tensor(lengths))
        self.offset = torch.cat([torch.arange(n) for n in lengths])
        for row, (start, end) in enumerate(zip(bounds, bounds[1:])):
            self.positions[row] = start
            self.positions[row, :end - start] = torch.arange(start, end)
            self.padding[row, :end - start] = False
        self._cached: dict[tuple, Any] = {}  # biases and indices, shared by every layer of a forward

    def pays(self) -> bool:
        """Short documents, and at most half the score elements of the masked row."""
        return self.width <= PADDED_DOCUMENT_MAX and 2 * self.count * self.width ** 2 <= self.length ** 2

    def causal_bias(self, groups: int):
        """0 where a position may attend, -inf elsewhere: one document's causal mask, repeated for the
        ``groups`` query heads that share a key head."""
        import torch

        if ("bias", groups) not in self._cached:
            allowed = torch.ones(self.width, self.width, dtype=torch.bool).tril().repeat(groups, 1)
            self._cached["bias", groups] = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        return self._cached["bias", groups]

    def gather(self, states):
        """[1, heads, length, dim] -> [count * heads, width, dim]: one index_select of the rows where they lie."""
        heads, dim = states.shape[1], states.shape[-1]
        if states.stride(-1) != 1 or states.stride(1) % dim or states.stride(2) % dim:
            states = states.contiguous()
        head_step, position_step = states.stride(1) // dim, states.stride(2) // dim
        key = ("gather", heads, head_step, position_step)
        if key not in self._cached:
            import torch

            heads_at = torch.arange(heads)[None, :, None] * head_step
            self._cached[key] = (self.positions[:, None, :] * position_step + heads_at).flatten()
        rows = states.as_strided(((heads - 1) * head_step + (self.length - 1) * position_step + 1, dim), (dim, 1))
        return rows.index_select(0, self._cached[key]).view(self.count * heads, self.width, dim)

    def scatter(self, batch, heads: int):
        """[count * heads, width, dim] -> [1, heads, length, dim] (laid out as [1, length, heads, dim]),
        leaving the padding out."""
        import torch

        dim = batch.shape[-1]
        if ("scatter", heads) not in self._cached:
            heads_at = torch.arange(heads)[None, :]
            self._cached["scatter", heads] = (
                (self.document[:, None] * heads + heads_at) * self.width + self.offset[:, None]).flatten()
        rows = batch.reshape(-1, dim).index_select(0, self._cached["scatter", heads])
        return rows.view(1, self.length, heads, dim).transpose(1, 2)

    def attend(self, query, key, value, scaling: float | None):
        """Causal attention within each document, in one batch: [1, length, heads, dim] like SDPA's output."""
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return padded_attention().apply(query, key, value, self, scale)


@contextlib.contextmanager
def onednn_float32_matmuls():
    """Float32 matmuls through oneDNN while inside: on the CPU of docs/benchmarks.md twice as fast as the default
    BLAS at the padded batch's shapes, with bit-identical results. The setting also lets oneDNN round the inputs to
    bf16 (accumulating in float32), as the CPU flash kernel does with bf16 inputs; it did not on that CPU."""
    import torch

    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = before


@functools.cache
def padded_attention():
    """The padded batch's attention as one autograd function: query heads grouped by the key head they share
    (keys and values never repeated), scores and softmax in float32, the weighted sum in the values' dtype, and a
    backward written out. The padding needs no mask: a real position attends only to the positions before it in
    its own document, and the gradient reaching the padding's outputs is zeroed."""
    import torch

    class PaddedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, query, key, value, layout, scale):
            heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[-1]
            groups, batch = heads // kv_heads, layout.count * kv_heads
            with torch.autocast("cpu", enabled=False), onednn_float32_matmuls():
                q = layout.gather(query).view(batch, groups * layout.width, dim).float()
                k = layout.gather(key).float()
                v = layout.gather(value)
                scores = torch.baddbmm(layout.causal_bias(groups), q, k.transpose(1, 2), alpha=scale)
                weights = torch.softmax(scores, dim=-1)
                rounded = weights.to(v.dtype)
                out = torch.bmm(rounded, v)
            ctx.save_for_backward(q, k, v, weights, rounded)
            ctx.layout, ctx.scale, ctx.dtypes = layout, scale, (query.dtype, key.dtype)
            return layout.scatter(out, heads).transpose(1, 2)

        @staticmethod
        def backward(ctx, grad):
            q, k, v, weights, rounded = ctx.saved_tensors
            layout, heads = ctx.layout, grad.shape[2]
            kv_heads = k.shape[0] // layout.count
            with torch.autocast("cpu", enabled=False), onednn_float32_matmuls():
                grad_out = layout.gather(grad.transpose(1, 2)).view(layout.count, heads, layout.width, -1)
                grad_out = grad_out.masked_fill_(layout.padding[:, None, :, None], 0).view(q.shape).to(v.dtype)
                grad_v = torch.bmm(rounded.transpose(1, 2), grad_out)
                grad_weights = torch.bmm(grad_out, v.transpose(1, 2)).float()
                grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, torch.float32)
                grad_q = torch.baddbmm(q, grad_scores, k, beta=0, alpha=ctx.scale)  # q gives only the shape
                grad_k = torch.baddbmm(k, grad_scores.transpose(1, 2), q, beta=0, alpha=ctx.scale)
            return (layout.scatter(grad_q, heads).to(ctx.dtypes[0]), layout.scatter(grad_k, kv_heads).to(ctx.dtypes[1]),
                    layout.scatter(grad_v, kv_heads), None, None)

    return PaddedAttention


class DocumentAttention:
    """SDPA that attends within each packed document instead of masking one long row.

    A padding-free batch is one row of several documents whose position_ids restart at 0; plain
    SDPA then runs over the whole row with a block-diagonal mask, so its cost grows with the
    square of the row length. This computes only the blocks the mask allows, with the same result:
    short documents as one padded batch (``PaddedDocuments``, where ``pays()``), longer ones with one
    causal SDPA call each on rows of ``min_row_length`` tokens or more (default
    ``DOCUMENT_ATTENTION_MIN_ROW``, read at each call). Anything else (GPU, generation with a cache,
    padded batches, tracing, one long document) goes to the stock SDPA function.
    """

    def __init__(self, fallback, min_row_length: int | None = None):
        self.fallback = fallback
        self.min_row_length = min_row_length
        # (position_ids, mask, bounds, layout) of the current forward: every layer gets the same tensors
        self._last: tuple[Any, Any, Any, Any] | None = None

    def bounds(self, position_ids, mask) -> list[int] | None:
        """Document start offsets plus the row length; None unless the mask is exactly the packed-documents one."""
        return self._plan(position_ids, mask)[0]

    def _plan(self, position_ids, mask) -> tuple[list[int] | None, PaddedDocuments | None]:
        import torch

        if self._last is not None and self._last[0] is position_ids and self._last[1] is mask:
            return self._last[2], self._last[3]
        bounds = document_bounds(position_ids[0])
        bounds = bounds if len(bounds) > 2 and mask is not None else None
        if bounds is not None:
            lengths = torch.tensor([end - start for start, end in zip(bounds, bounds[1:])])
            document = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
            expected = (document[:, None] == document[None, :]).tril()
            if mask.dtype != torch.bool or mask.shape[-2:] != expected.shape or not torch.equal(mask[0, 0], expected):
                bounds = None  # the mask also hides padding or something else: leave it to SDPA
        layout = PaddedDocuments(bounds) if bounds is not None else None
        self._last = (position_ids, mask, bounds, layout)
        return bounds, layout

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                 **kwargs):
        import torch
        from transformers.integrations.sdpa_attention import repeat_kv

        position_ids = kwargs.get("position_ids")
        min_row = DOCUMENT_ATTENTION_MIN_ROW if self.min_row_length is None else self.min_row_length
        usable = (enabled("document_attention", query.device) and position_ids is not None and query.shape[0] == 1
                  and position_ids.shape[0] == 1 and query.shape[2] == key.shape[2] == position_ids.shape[-1]
                  and query.shape[1] % key.shape[1] == 0
                  and not torch.jit.is_tracing() and not torch.compiler.is_compiling())
        bounds, layout = self._plan(position_ids, attention_mask) if usable else (None, None)
        if layout is not None and layout.pays() and not dropout:
            return layout.attend(query, key, value, scaling), None
        if bounds is None or query.shape[2] < min_row:
            return self.fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                 is_causal=is_causal, **kwargs)
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        with self.kernel_for(query):
            pieces = [torch.nn.functional.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
                for a, b in zip(bounds, bounds[1:])]
        return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None

    @staticmethod
    def kernel_for(query):
        """The math kernel where a backward follows (for documents of tens to hundreds of tokens its
        backward is the faster one on CPU), the default (flash) kernel elsewhere."""
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if torch.is_grad_enabled() and query.requires_grad:
            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()


def use_document_attention() -> None:
    """Route ``attn_implementation="sdpa"`` through DocumentAttention in this process (idempotent)."""
    if "document_attention" in switched_off:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("sdpa", DocumentAttention(sdpa_attention_forward))


# --- frozen_prefix -----------------------------------------------------------------------------------------------

DEFAULT_MAX_BYTES = 1 << 30  # past this, no more documents are kept (those kept are still reused)


class FrozenPrefixCache:
    """Computes a causal LM's frozen bottom layers once per document instead of once per epoch.

    With adapters in the top layers only (``peft_top_layers``), the decoder layers below them never
    change during training. With no dropout, and with packed rows (no attention mask, position ids
    that restart at each document, so attention stays within a document), their output for a
    document depends on the document's tokens and starting position alone. So it is kept after the
    first time and reused in every later epoch, and in the evaluation after training, which sees
    the same documents as the one before it.

    Anything else runs the layers as usual: generation (a KV cache), padded batches, inputs given
    as embeddings, or a frozen weight that is changed in place (the cache is emptied) or unfrozen.
    A change is seen by the weights' version counters, which writes through ``.data`` (PEFT's
    merge) do not bump: the cache serves training and the evaluation right after it, before any
    merge.
    """

    def __init__(self, decoder, depth: int, max_bytes: int = DEFAULT_MAX_BYTES):
        self.depth = depth
        self.max_bytes = max_bytes
        self.frozen = [*decoder.get_input_embeddings().parameters(),
                       *(p for layer in decoder.layers[:depth] for p in layer.parameters())]
        self.outputs: dict[tuple, Any] = {}
        self.stored_bytes = 0
        self.hits = self.misses = 0
        self._versions = self._weight_versions()
        self._plan: list[list[tuple]] | None = None  # per row, the keys of its documents; None = bypass
        self._skip = False  # the current forward took its prefix output from the cache
        self._disabled = False  # the layers return something other than a tensor: left alone
        decoder.register_forward_pre_hook(self._plan_forward, with_kwargs=True)
        for index, layer in enumerate(decoder.layers[:depth]):
            layer.forward = types.MethodType(self._wrap(index, layer.forward), layer)

    def _weight_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.frozen)

    def _plan_forward(self, decoder, args, kwargs) -> None:
        import torch

        self._plan, self._skip = None, False
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        position_ids = kwargs.get("position_ids")
        if (self._disabled or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2
                or kwargs.get("inputs_embeds") is not None or kwargs.get("attention_mask") is not None
                or kwargs.get("past_key_values") is not None or kwargs.get("use_cache")
                or any(p.requires_grad for p in self.frozen)):
            return
        versions = self._weight_versions()
        if versions != self._versions:  # a frozen weight was changed in place: what is kept is stale
            self.outputs.clear()
            self.stored_bytes, self._versions = 0, versions
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        position_ids = position_ids.expand_as(input_ids)
        autocast = (torch.is_autocast_enabled(input_ids.device.type),
                    torch.get_autocast_dtype(input_ids.device.type))
        self._plan = [self._document_keys(ids, positions, autocast)
                      for ids, positions in zip(input_ids.cpu(), position_ids.cpu())]
        self._skip = all(key in self.outputs for row in self._plan for _, _, key in row)
        self.hits += self._skip
        self.misses += not self._skip

    @staticmethod
    def _document_keys(ids, positions, autocast) -> list[tuple]:
        """(start, end, key) per packed document of one row."""
        bounds = document_bounds(positions)
        return [(a, b, (ids[a:b].numpy().tobytes(), int(positions[a]), autocast))
                for a, b in zip(bounds, bounds[1:])]

    def _wrap(self, index: int, forward):
        def cached_forward(layer, hidden_states, *args, **kwargs):
            if self._plan is None:
                return forward(hidden_states, *args, **kwargs)
            if self._skip:
                if index == 0:
                    return self._assemble(hidden_states)
                return hidden_states  # already the output of the last frozen layer
            output = forward(hidden_states, *args, **kwargs)
            if index == self.depth - 1:
                self._store(output)
            return output

        return cached_forward

    def _assemble(self, like):
        import torch

        rows = [torch.cat([self.outputs[key] for _, _, key in row]) for row in self._plan]
        output = torch.stack(rows).to(like.device)
        # Reentrant gradient checkpointing needs its input to require grad, as the embeddings' output then does.
        return output.requires_grad_(like.requires_grad)

    def _store(self, output) -> None:
        import torch

        if not isinstance(output, torch.Tensor):  # an older layer API (a tuple): nothing to reuse safely
            self._disabled = True
            return
        for row, documents in zip(output.detach(), self._plan):
            for start, end, key in documents:
                piece = row[start:end]
                if key in self.outputs or self.stored_bytes + piece.nbytes > self.max_bytes:
                    continue
                self.outputs[key] = piece.clone()
                self.stored_bytes += piece.nbytes


def frozen_depth(decoder) -> int:
    """How many decoder layers, from the bottom, have no trainable weight (0 if the embeddings train)."""
    if any(p.requires_grad for p in decoder.get_input_embeddings().parameters()):
        return 0
    depth = 0
    for layer in decoder.layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        depth += 1
    return depth


def has_dropout(decoder, depth: int) -> bool:
    """Whether the embeddings or the bottom ``depth`` layers may drop anything out (then no output repeats)."""
    import torch

    rates = [value for name, value in vars(decoder.config).items()
             if ("dropout" in name or "pdrop" in name) and isinstance(value, (int, float))]
    modules = [*decoder.get_input_embeddings().modules(),
               *(m for layer in decoder.layers[:depth] for m in layer.modules())]
    return any(rate > 0 for rate in rates) or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in modules)


def reuse_frozen_prefix(model, max_bytes: int = DEFAULT_MAX_BYTES) -> FrozenPrefixCache | None:
    """Attach a FrozenPrefixCache to ``model`` (a transformers causal LM, PEFT-wrapped or not) where it applies.

    Returns None, changing nothing, where the model has no ``layers`` list, no frozen bottom layer
    below a trained one, or dropout.
    """
    import torch

    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = decoder.get_decoder() if hasattr(decoder, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return None
    depth = frozen_depth(decoder)
    if depth == 0 or depth == len(layers) or has_dropout(decoder, depth):
        return None
    log.info("decoder layers 0-%d are frozen: their output is computed once per document and reused "
             "(up to %.1f GiB)", depth - 1, max_bytes / 2**30)
    return FrozenPrefixCache(decoder, depth, max_bytes)


# --- frozen_weight_copies ----------------------------------------------------------------------------------------

class FrozenWeightCopies:
    """While training under CPU autocast, each frozen float32 ``nn.Linear`` weight is cast once and kept.

    Autocast keeps its low-precision copy of a weight only while one forward runs, and only for weights
    that require grad; a frozen weight (LoRA's base model) is cast again in every forward. Here the
    copy is kept across steps: the same values (autocast would round the same weight the same way),
    recast if the weight changes in place (its version counter; not through ``.data``) or the autocast
    dtype changes. ``speed_up_training`` installs it for the length of ``train()`` only, so no
    copy outlives the loop (an adapter merge writes through ``.data``). Copies stop at ``max_bytes``;
    the rest are cast per call as before (a packed pair that no longer fits gives way to a plain copy).

    With ``packed`` (bf16 where oneDNN supports it), a copy is kept in oneDNN's blocked layout, twice: the
    weight for the forward and its transpose for the gradient to the input (``PackedFrozenLinear``). A plain
    weight is reordered into that layout inside every matmul; a packed one is not, which made these matmuls
    faster here (docs/benchmarks.md). It costs a second copy's memory.
    """

    def __init__(self, model, max_bytes: int = DEFAULT_MAX_BYTES, packed: bool = False):
        import torch

        self.modules = [m for m in model.modules() if type(m) is torch.nn.Linear
                        and m.weight.dtype == torch.float32 and not m.weight.requires_grad]
        self.modules_set = set(self.modules)
        self.max_bytes = max_bytes
        self.packed = packed
        self.copies: dict[int, tuple[Any, int, Any, int]] = {}  # id(module) -> (dtype, version, copy or pair, bytes)
        self.stored_bytes = 0

    def install(self) -> None:
        for module in self.modules:
            module.forward = functools.partial(self._forward, module)

    def remove(self) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)
        self.copies.clear()
        self.stored_bytes = 0

    def _forward(self, module, x):
        import torch

        copy = self.copy_for(module, x)
        if copy is None:
            return torch.nn.functional.linear(x, module.weight, module.bias)
        return self._linear(module, x, copy)

    def copy_for(self, module, x):
        """The kept copy of ``module``'s weight for a forward on ``x`` (a packed pair, or a plain copy), made if
        there is none yet; None where autocast would not cast it (not a CPU autocast region, or a trained weight)."""
        import torch

        weight = module.weight
        if not (torch.is_autocast_enabled(x.device.type) and x.device.type == "cpu") or weight.requires_grad:
            return None
        dtype = torch.get_autocast_dtype("cpu")
        kept = self.copies.get(id(module))
        if kept is not None and kept[0] == dtype and kept[1] == weight._version:
            return kept[2]
        copy = weight.detach().to(dtype)
        size = copy.nbytes
        stored = self.stored_bytes - (kept[3] if kept is not None else 0)
        if self.packed and packs_weights(dtype) and stored + 2 * size <= self.max_bytes:  # else a plain copy, if any
            rows = x.numel() // x.shape[-1] or 1  # oneDNN picks the blocked layout for this many rows
            copy = (torch.ops.mkldnn._reorder_linear_weight(copy, rows),
                    torch.ops.mkldnn._reorder_linear_weight(copy.t().contiguous(), rows))
            size *= 2
        if stored + size <= self.max_bytes:
            self.copies[id(module)] = (dtype, weight._version, copy, size)
            self.stored_bytes = stored + size
        return copy

    @staticmethod
    def _linear(module, x, copy):
        import torch

        if not isinstance(copy, tuple):
            return torch.nn.functional.linear(x, copy, module.bias)
        forward, transposed = copy
        dtype = forward.dtype
        bias = None if module.bias is None else module.bias.to(dtype)
        return packed_frozen_linear().apply(x.to(dtype), forward, transposed, bias)


@functools.cache
def packs_weights(dtype) -> bool:
    """Whether this torch build and CPU run oneDNN's packed-weight linear in ``dtype`` (bf16: if the CPU has it)."""
    import torch

    mkldnn = torch.ops.mkldnn
    if dtype not in (torch.bfloat16, torch.float32) or not torch.backends.mkldnn.is_available() or not all(
            hasattr(mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported")):
        return False
    return dtype == torch.float32 or bool(mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def packed_frozen_linear():
    """``x @ W^T + b`` for a frozen ``W`` held packed (``FrozenWeightCopies``): the gradient goes to ``x`` only,
    through the packed transpose."""
    import torch

    linear = torch.ops.mkldnn._linear_pointwise

    class PackedFrozenLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, forward, transposed, bias):
            ctx.transposed = transposed
            return linear(x.contiguous(), forward, bias, "none", [], "")

        @staticmethod
        def backward(ctx, grad):
            return linear(grad.contiguous(), ctx.transposed, None, "none", [], ""), None, None, None

    return PackedFrozenLinear


class FusedLora:
    """LoRA Linear layers computing ``base(x) + scaling * B(A(x))`` in fewer operations under CPU autocast.

    PEFT's forward casts the input to float32 for ``lora_A`` (which autocast casts back), multiplies
    the update by the scaling and adds it to the base output: passes over input- and output-sized
    tensors, and as many again in the backward, for each of a model's ~200 adapted layers. Here the
    input is cast to the autocast dtype once for both the base layer and ``lora_A`` (and for the next
    layers that read the same input, as k and v read q's), the scaling is folded into ``lora_B``'s
    (small) weight, and the update is added inside the matmul (``addmm``), in one autograd function
    (``lora_update``), which takes in the base matmul as well where ``copies`` keeps its weight packed
    (``packed_lora_linear``). The sum is rounded once instead of three times; otherwise the numbers
    are the stock ones. Merged,
    disabled or mixed-batch adapters, DoRA and other variants, LoRA biases and extra forward
    arguments take PEFT's own forward.
    """

    ATTRIBUTES = ("lora_A", "lora_B", "lora_dropout", "scaling", "lora_variant", "base_layer", "merged",
                  "disable_adapters", "active_adapters")

    def __init__(self, model, copies: FrozenWeightCopies | None = None):
        import torch

        self.copies = copies  # where the base layers' weights are kept packed, the base matmul joins LoRA's function
        self.modules = [m for m in model.modules() if all(hasattr(m, name) for name in self.ATTRIBUTES)
                        and isinstance(m.base_layer, torch.nn.Linear)]
        self.used: set[int] = set()  # id() of the modules that took the fused path
        self._last_cast: tuple[Any, int, Any] | None = None

    def install(self) -> None:
        for module in self.modules:
            module.forward = functools.partial(self._forward, module, module.forward)

    def remove(self) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)
        self.used.clear()
        self._last_cast = None

    def _forward(self, module, peft_forward, x, *args, **kwargs):
        import torch

        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if (args or kwargs or module.disable_adapters or module.merged or x.device.type != "cpu"
                or not torch.is_autocast_enabled("cpu")
                or any(a in module.lora_variant or module.lora_B[a].bias is not None for a in adapters)):
            return peft_forward(x, *args, **kwargs)
        self.used.add(id(module))
        x = self._cast(x, torch.get_autocast_dtype("cpu"))
        pair = self._packed_pair(module, adapters, x)
        if pair is not None:
            adapter = adapters[0]
            return packed_lora_linear().apply(x, *pair, module.lora_A[adapter].weight, module.lora_B[adapter].weight,
                                              module.scaling[adapter])
        result = module.base_layer(x)
        for adapter in adapters:
            result = lora_update().apply(module.lora_dropout[adapter](x), result, module.lora_A[adapter].weight,
                                         module.lora_B[adapter].weight, module.scaling[adapter])
        return result

    def _packed_pair(self, module, adapters, x):
        """The packed pair of ``module``'s base weight where the base matmul can join LoRA's function (one adapter
        without dropout, a base layer without bias whose weight ``copies`` keeps packed), else None."""
        import torch

        base = module.base_layer
        if (self.copies is None or len(adapters) != 1 or base.bias is not None or base not in self.copies.modules_set
                or not isinstance(module.lora_dropout[adapters[0]], torch.nn.Identity)):
            return None
        pair = self.copies.copy_for(base, x)
        return pair if isinstance(pair, tuple) else None

    def _cast(self, x, dtype):
        """``x`` in ``dtype``, cast once for all the layers that read it in turn (q, k and v; gate and up)."""
        if not x.is_floating_point() or x.dtype == dtype:
            return x
        last = self._last_cast
        if last is not None and last[0] is x and last[1] == x._version and last[2].dtype == dtype:
            return last[2]
        cast = x.to(dtype)
        self._last_cast = (x, x._version, cast)
        return cast


def low_rank_forward(rows, a, b, scaling):
    """LoRA's share of a forward, in the dtype of ``rows`` (the input, one row per token): ``A`` cast, ``B`` scaled
    and cast, and ``rows @ A^T``."""
    import torch

    a_cast, b_scaled = a.to(rows.dtype), (b * scaling).to(rows.dtype)
    return a_cast, b_scaled, torch.mm(rows, a_cast.t())


def low_rank_backward(grad_rows, rows, low_rank, a_cast, b_scaled, scaling, dtypes):
    """From the output's gradient (one row per token): the gradient of ``rows @ A^T`` (for the input's, which the
    caller adds where it belongs), and those of ``A`` and ``B`` in their own ``dtypes``."""
    import torch

    grad_low_rank = torch.mm(grad_rows, b_scaled)
    grad_b = torch.mm(grad_rows.t(), low_rank).to(dtypes[1]).mul_(scaling)
    grad_a = torch.mm(grad_low_rank.t(), rows).to(dtypes[0])
    return grad_low_rank, grad_a, grad_b


@functools.cache
def packed_lora_linear():
    """A LoRA Linear over a frozen weight held packed (``FrozenWeightCopies``) as one autograd function: the base
    matmul and the update in one output, and in the backward the gradient to the input from the packed transpose
    with ``lora_A``'s share added into it, instead of two functions whose input gradients autograd then adds."""
    import torch

    linear = torch.ops.mkldnn._linear_pointwise

    class PackedLoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, forward, transposed, a, b, scaling):
            with torch.autocast("cpu", enabled=False):
                rows = x.reshape(-1, x.shape[-1]).contiguous()
                a_cast, b_scaled, low_rank = low_rank_forward(rows, a, b, scaling)
                out = linear(rows, forward, None, "none", [], "").addmm_(low_rank, b_scaled.t())
            ctx.save_for_backward(rows, low_rank, a_cast, b_scaled)
            ctx.transposed, ctx.scaling, ctx.x_shape, ctx.dtypes = transposed, scaling, x.shape, (a.dtype, b.dtype)
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            rows, low_rank, a_cast, b_scaled = ctx.saved_tensors
            with torch.autocast("cpu", enabled=False):
                grad_rows = grad.reshape(-1, grad.shape[-1]).contiguous()
                grad_low_rank, grad_a, grad_b = low_rank_backward(grad_rows, rows, low_rank, a_cast, b_scaled,
                                                                  ctx.scaling, ctx.dtypes)
                grad_x = None
                if ctx.needs_input_grad[0]:
                    grad_x = linear(grad_rows, ctx.transposed, None, "none", [], "").addmm_(grad_low_rank, a_cast)
                    grad_x = grad_x.view(ctx.x_shape)
            return grad_x, None, None, grad_a, grad_b, None

    return PackedLoraLinear


@functools.cache
def lora_update():
    """``result + scaling * (x @ A^T) @ B^T`` with the backward written out: the low-rank products in the dtype of
    ``result`` (the base layer's output), the gradients of ``A`` and ``B`` in theirs."""
    import torch

    class LoraUpdate(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, result, a, b, scaling):
            with torch.autocast("cpu", enabled=False):
                rows = x.reshape(-1, x.shape[-1]).to(result.dtype)
                a_cast, b_scaled, low_rank = low_rank_forward(rows, a, b, scaling)
                out = torch.addmm(result.reshape(-1, result.shape[-1]), low_rank, b_scaled.t())
            ctx.save_for_backward(rows, low_rank, a_cast, b_scaled)
            ctx.scaling, ctx.x_meta, ctx.dtypes = scaling, (x.shape, x.dtype), (a.dtype, b.dtype)
            return out.view(result.shape)

        @staticmethod
        def backward(ctx, grad):
            rows, low_rank, a_cast, b_scaled = ctx.saved_tensors
            with torch.autocast("cpu", enabled=False):
                grad_rows = grad.reshape(-1, grad.shape[-1])
                grad_low_rank, grad_a, grad_b = low_rank_backward(grad_rows, rows, low_rank, a_cast, b_scaled,
                                                                  ctx.scaling, ctx.dtypes)
                grad_x = None
                if ctx.needs_input_grad[0]:
                    grad_x = torch.mm(grad_low_rank, a_cast).view(ctx.x_meta[0]).to(ctx.x_meta[1])
            return grad_x, grad, grad_a, grad_b, None

    return LoraUpdate


# --- heap_reuse --------------------------------------------------------------------------------------------------

@functools.cache
def glibc():
    """The process's C library through ctypes if it is glibc (``mallopt`` and ``malloc_trim`` as documented
    there), else None."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018 - AttributeError if not glibc
    except (OSError, AttributeError):
        return None
    return libc


class HeapReuse:
    """While training on a CPU, glibc's malloc keeps freed memory for the next allocation instead of unmapping it.

    glibc serves an allocation of 32 MiB or more (and smaller ones past its adaptive threshold) with a
    fresh ``mmap`` and unmaps it when it is freed, so a tensor that size made in every micro-batch (the LM
    head's float32 logits, their log-softmax and gradients) is faulted in and zeroed by the kernel page by
    page every time. Here ``mallopt`` turns those mmaps and the trimming of the heap's top off, so freed
    blocks stay in the heap and the next micro-batch reuses them. ``remove`` restores glibc's defaults
    and gives the free memory back (``malloc_trim``). Not glibc: nothing happens.
    """

    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}  # mallopt takes an int
    GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}

    def __init__(self):
        self.installed = False

    def install(self) -> bool:
        libc = glibc()
        if libc is not None:
            self.installed = all([libc.mallopt(param, value) == 1 for param, value in self.KEEP.items()])
        return self.installed

    def remove(self) -> None:
        libc = glibc()
        if libc is not None:
            for param, value in self.GLIBC_DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)
        self.installed = False


@contextlib.contextmanager
def heap_kept_for_reuse(device, wanted: bool = True):
    """``HeapReuse`` for the length of the block when ``device`` is a CPU and ``wanted`` (the run's ``heap_reuse``
    key): a hand-written training loop's share of ``speed_up_training``."""
    heap = HeapReuse() if wanted and enabled("heap_reuse", device) else None
    if heap is not None and heap.install():
        log.info("freed memory kept by malloc for reuse while training (no mmap, no trim)")
    try:
        yield
    finally:
        if heap is not None:
            heap.remove()


def speed_up_training(trainer, fuse_lora: bool = True, model_paths: bool = True, reuse_heap: bool = True) -> None:
    """Make ``trainer.train()`` run with the training-only CPU paths installed when it trains on a CPU, and removed
    when it returns or raises: ``HeapReuse`` (unless ``reuse_heap``, the run's ``heap_reuse`` key, is false), and
    in bf16 or fp16 ``FrozenWeightCopies`` (packed where ``packed_frozen_weights`` is on) and ``FusedLora`` (unless
    ``fuse_lora`` is false). Without ``model_paths`` (a model wrapped by DeepSpeed) only the heap."""
    args = trainer.args
    low_precision = (args.bf16 or args.fp16) and model_paths
    reuse_heap = reuse_heap and enabled("heap_reuse", args.device)
    keep_copies = low_precision and enabled("frozen_weight_copies", args.device)
    packed = keep_copies and enabled("packed_frozen_weights", args.device)
    fuse_lora = fuse_lora and low_precision and enabled("fused_lora", args.device)
    if not (reuse_heap or keep_copies or fuse_lora):
        return
    train = trainer.train

    @functools.wraps(train)
    def train_with_fast_paths(*pargs, **kwargs):
        copies = FrozenWeightCopies(trainer.model, packed=packed) if keep_copies else None
        fused = FusedLora(trainer.model, copies) if fuse_lora else None
        with heap_kept_for_reuse(args.device, reuse_heap):
            for path in (copies, fused):
                if path is not None:
                    path.install()
            try:
                return train(*pargs, **kwargs)
            finally:
                if copies is not None:
                    packs = sum(isinstance(kept[2], tuple) for kept in copies.copies.values())
                    log.info("frozen weights cast once for all of training: %d Linear layers, %.0f MiB%s",
                             len(copies.copies), copies.stored_bytes / 2**20,
                             f" ({packs} packed for oneDNN, with their transposes)" if packs else "")
                if fused is not None and fused.modules:
                    log.info("LoRA updates fused into the base matmul: %d of %d LoRA layers", len(fused.used),
                             len(fused.modules))
                for path in (fused, copies):
                    if path is not None:
                        path.remove()

    trainer.train = train_with_fast_paths


# --- plain_lm_head -----------------------------------------------------------------------------------------------

def use_plain_lm_head(trainer, peft: bool) -> None:
    """On CPU, give a TRL DPOTrainer's policy and reference model ``plain_lm_head``."""
    if not enabled("plain_lm_head", trainer.args.device):
        return
    for scorer in (trainer.model, trainer.ref_model):
        if scorer is not None:
            plain_lm_head(scorer.get_base_model() if peft and scorer is trainer.model else scorer)


def plain_lm_head(model) -> None:
    """Answer TRL's ``fused_lm_head=True`` calls from the model's own logits of the scored positions.

    TRL's chunked LM-head kernel never materializes the (batch, length, vocab) logits, which matters
    for memory on a GPU; its CPU fallback scores every position (prompt and padding too). Here the
    model's forward computes logits from the first completion token on only (``logits_to_keep``;
    softcapping and scaling stay the model's own), and the per-token fields TRL reads are derived
    from them.
    """
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    trl_forward = model.forward  # TRL's patch; without fused_lm_head it is the model's own forward

    @functools.wraps(trl_forward)
    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            return trl_forward(*args, labels=labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        first = int(mask.any(dim=0).int().argmax())  # the first position that any row scores
        logits = trl_forward(*args, logits_to_keep=targets.size(1) + 1 - first, **kwargs).logits[:, :-1].float()
        scored, keep = targets[:, first:], mask[:, first:]
        log_softmax = torch.log_softmax(logits, dim=-1)
        log_probs = log_softmax.gather(-1, scored.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)
            mean_logits = logits.mean(dim=-1)
            is_top1 = logits.argmax(dim=-1) == scored

        def full(x):  # back to one value per position, 0 where nothing is scored
            x = x.masked_fill(~keep, 0)
            return torch.cat([x.new_zeros(x.size(0), first), x], dim=1)

        log_probs = full(log_probs)
        return FusedCausalLMOutput(loss=-log_probs.sum() / mask.sum().clamp(min=1), log_probs=log_probs,
                                   entropy=full(entropy), mean_logits=full(mean_logits), is_top1=full(is_top1),
                                   label_mask=mask)

    model.forward = forward


# --- cached_weight_casts -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def cached_weight_casts(model, low_precision: bool):
    """Inside an autocast region, cast each frozen float32 weight once instead of at every call (CPU).

    Autocast keeps its low-precision copy of a weight for the whole region only if the weight
    requires grad, so a frozen one (a LoRA base) is cast again for every generated token. This
    marks frozen weights as requiring grad for the duration (use under no_grad: no graph is built).
    On a GPU the casts are cheap and the cached copies would cost memory.
    """
    import torch

    on = low_precision and enabled("cached_weight_casts", model.device)
    frozen = [p for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32] if on else []
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)
