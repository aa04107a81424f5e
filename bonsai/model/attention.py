"""Which attention runs, and how packed rows keep their documents apart.

A packed row holds several documents; each must attend only to itself. Two ways exist:
- a dense (B, 1, L, L) block-causal mask (`sdpa`, `eager`): always correct, but every row pays L² and
  sdpa cannot take its flash kernel;
- position_ids that restart at 0 for each document and no mask at all (`sdpa_varlen`, `flex_attention`,
  `flash_attention_2`): the attention finds the documents itself and pays Σ doc² instead of L².

`sdpa_varlen` is Bonsai's own and runs anywhere: scaled_dot_product_attention with `is_causal` over the
documents, those of similar length gathered into one batch (FlexAttention has no backward on CPU in torch
2.13, flash-attn is CUDA-only). Its
documents are found from position_ids exactly as transformers finds them for the other two (a new
document wherever a position is not its predecessor + 1), so the three agree.

The mask-free paths rely on two things the caller must keep: no 2-D attention_mask (an all-ones one
silently disables transformers' packing detection), and no KV cache.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from bonsai.config import ConfigError

VARLEN = "sdpa_varlen"
DENSE_MASK = frozenset({"sdpa", "eager"})
"""Implementations that need Bonsai's block-causal mask to isolate packed documents."""


def document_bounds(position_ids: torch.Tensor, on_host: bool = False) -> list[list[tuple[int, int]]]:
    """(B, L) position ids -> per row, the [start, end) of each document: one starts wherever a position
    does not follow its predecessor (transformers' `find_packed_sequence_indices` rule)."""
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    length = position_ids.shape[1]
    bounds = []
    # `on_host`: a copy that never was on the device (through numpy: not a read of the device, and not
    # counted as one by bonsai.observe.host_syncs).
    for row in (starts.numpy().tolist() if on_host else starts.tolist()):
        begins = [i for i, s in enumerate(row) if s] or [0]
        if begins[0] != 0:
            begins.insert(0, 0)
        bounds.append(list(zip(begins, begins[1:] + [length])))
    return bounds


@dataclass(frozen=True)
class _Bucket:
    """Documents of similar length, gathered into one (N, longest) batch: `index` holds each one's token
    positions in the flattened (B * L) row, padded at the end by repeating its first position; `keep`
    the positions of the real tokens in the flattened (N * longest) batch."""

    index: torch.Tensor  # (N, longest)
    keep: torch.Tensor  # (tokens,)
    longest: int


def _bucket(docs: list[tuple[int, int]], device) -> tuple[_Bucket, list[int]]:
    """One bucket of (flat start, length) documents, and its real tokens' flat positions in row order.
    Built in Python on the host: on a GPU every index here would otherwise be a nonzero (a host sync) per
    bucket per layer; now the only one is reading the positions (document_bounds), once per forward."""
    longest = max(n for _, n in docs)
    index = [[s + (j if j < n else 0) for j in range(longest)] for s, n in docs]
    keep = [i * longest + j for i, (_, n) in enumerate(docs) for j in range(n)]
    order = [s + j for s, n in docs for j in range(n)]
    bucket = _Bucket(torch.tensor(index, device=device), torch.tensor(keep, device=device), longest)
    return bucket, order


def document_buckets(position_ids: torch.Tensor, batch: int, device=None) -> tuple[list[_Bucket], torch.Tensor]:
    """The documents of every row, bucketed by the power of two above their length (a handful of sdpa
    calls per layer instead of one per document, at most 4x the attention of exact lengths), and the
    permutation that puts the buckets' outputs back in row order. `device`: where the buckets go, when
    `position_ids` is the batch's host copy."""
    bounds = document_bounds(position_ids, on_host=device is not None)
    if len(bounds) != batch:  # one row of positions shared by the batch
        bounds = bounds * batch
    length = position_ids.shape[1]
    by_size: dict[int, list[tuple[int, int]]] = {}
    for b, row in enumerate(bounds):
        for s, e in row:
            by_size.setdefault(max(e - s - 1, 0).bit_length(), []).append((b * length + s, e - s))
    buckets, order = [], []
    device = device or position_ids.device
    for docs in by_size.values():
        bucket, positions = _bucket(docs, device)
        buckets.append(bucket)
        order += positions
    # The inverse of `order`, computed here rather than by argsort on the device.
    inverse = [0] * len(order)
    for i, p in enumerate(order):
        inverse[p] = i
    return buckets, torch.tensor(inverse, device=device)


_last: tuple = (None, -1, 0, None)  # (position_ids tensor, its version, batch, its buckets)


def _cached_buckets(position_ids: torch.Tensor, batch: int):
    """Every layer of one forward gets the same position_ids tensor: find the documents once (on a GPU
    that is a host sync), not once per layer."""
    global _last
    tensor, version, size, buckets = _last
    if tensor is not position_ids or version != position_ids._version or size != batch:
        buckets = document_buckets(position_ids, batch)
        _last = (position_ids, position_ids._version, batch, buckets)
    return buckets


def prime_document_buckets(position_ids: torch.Tensor, host_position_ids: torch.Tensor) -> None:
    """The documents of a forward's rows, found from the batch's host copy of its positions: then reading
    the device tensor back (a host sync per forward on a GPU) is not needed."""
    global _last
    batch = position_ids.shape[0]
    _last = (position_ids, position_ids._version, batch, document_buckets(host_position_ids, batch, position_ids.device))


def sdpa_varlen_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        position_ids=None, **kwargs):
    """transformers' attention-function signature; query/key/value are (B, heads, L, head_dim), the
    result (B, L, heads, head_dim). Each bucket's documents run as one causal sdpa batch: padding sits at
    the end of each document, so causality alone keeps every real query off it."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        # Generation (a padding mask, or one new query against a cache): nothing is packed there.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    batch, heads, length, dim = query.shape
    flat = [t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value)]
    buckets, order = _cached_buckets(position_ids, batch)
    outputs = []
    for bucket in buckets:
        q, k, v = (t[bucket.index].transpose(1, 2) for t in flat)  # (N, heads, longest, dim)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
        # (tokens, heads, dim): an integer gather, not a boolean mask (no host sync, forward or backward)
        outputs.append(out.transpose(1, 2).reshape(-1, heads, dim)[bucket.keep])
    return torch.cat(outputs)[order].reshape(batch, length, heads, dim), None


def _varlen_mask(*args, attention_mask=None, q_offset=0, kv_offset=0, q_length=None, kv_length=None, **kwargs):
    """No mask for a packed training forward (the attention reads position_ids); generation gets sdpa's."""
    if attention_mask is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_offset=q_offset, kv_offset=kv_offset,
                     q_length=q_length, kv_length=kv_length, **kwargs)


# Never traced by torch.compile (train.compile): its documents change from batch to batch (bonsai.model.compile).
AttentionInterface.register(VARLEN, torch.compiler.disable(sdpa_varlen_forward, recursive=True))
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, _varlen_mask)


DENSE_MASK_UP_TO = 256
"""On a CPU, rows up to this long attend through sdpa and a dense block mask under `auto`: at 256 one
layer's attention (forward + backward) took 29 ms with the mask against 38 ms per document at the tiny
model's heads (8 x 32), 310 against 303 at Phi-2's (32 x 80), and a whole step of the framework-cost
benchmark was 0.94 of a bare loop's against 0.86 (medians) (bench/attention_paths.py, bench/RESULTS.md, issue 28);
from 512 on, per-document attention is 1.7-7x cheaper. On CUDA it has not been measured: auto stays
per-document there."""


def resolve_attention(requested: str, device_type: str, row_length: int | None = None) -> str:
    """`auto`: flash_attention_2 on CUDA when flash-attn is installed; on a CPU with rows of at most
    DENSE_MASK_UP_TO tokens, sdpa with the block mask; else sdpa_varlen. An explicit choice that cannot
    train here is refused before the model loads."""
    has_flash = device_type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        if has_flash:
            return "flash_attention_2"
        short = device_type == "cpu" and row_length is not None and row_length <= DENSE_MASK_UP_TO
        return "sdpa" if short else VARLEN
    here = resolve_attention("auto", device_type, row_length)  # what the hint offers instead
    if requested == "flash_attention_2" and not has_flash:
        raise ConfigError("model.attn_implementation flash_attention_2 needs CUDA and the flash-attn package; "
                         f"use auto ({here} here)")
    if requested == "flex_attention" and device_type != "cuda":
        raise ConfigError("model.attn_implementation flex_attention has no backward on CPU in this torch; "
                         f"use auto ({here} here) or sdpa")
    return requested


def needs_dense_mask(implementation: str) -> bool:
    return implementation in DENSE_MASK


def describe_attention(implementation: str, loss_chunk_tokens: int, configured_chunk: int | None = None,
                       logits_mib: float | None = None) -> str:
    """The start-up line that says how packed documents are kept apart and how the loss is taken (and,
    where model.loss_chunk_above_mib turned chunking off, why)."""
    how = "a dense block mask per row" if needs_dense_mask(implementation) else "position_ids, no mask"
    loss = f"logits {loss_chunk_tokens} positions at a time" if loss_chunk_tokens else "whole-row logits"
    if logits_mib is not None:
        loss += f" (a micro-batch's whole logits: {logits_mib:.0f} MiB"
        loss += "; under model.loss_chunk_above_mib, chunking would buy nothing)" if configured_chunk and not loss_chunk_tokens else ")"
    return f"attention: {implementation} (documents isolated by {how}); loss: {loss}"
