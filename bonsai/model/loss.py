"""The forward pass and the token-level loss, per micro-batch and per record.

The training objective is the mean over every response token of the optimizer step (all
micro-batches, all ranks): each micro-batch contributes its *sum* of token losses divided by the
step's global token count. Averaging per-micro-batch means instead over-weights short batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bonsai.data.records import CATEGORIES, LANGUAGES
from bonsai.data.packing import Batch, additive_mask, block_causal_mask
from bonsai.data.records import Record
from bonsai.data.template import IGNORE_INDEX
from bonsai.metric_keys import CATEGORY, LANGUAGE
from bonsai.model.attention import VARLEN, needs_dense_mask, prime_document_buckets
from bonsai.model.loss_head import find_loss_head


@dataclass
class MicroBatchLoss:
    loss_sum: torch.Tensor  # scalar, with grad: sum of response-token losses
    record_loss_sum: torch.Tensor  # (num_records,), detached
    record_tokens: torch.Tensor  # (num_records,)
    record_eos_loss: torch.Tensor  # (num_records,), detached: the loss on each record's last target, its EOS


def _attention_mask(model, batch: Batch) -> torch.Tensor | None:
    """The dense block mask where the attention needs one; None where it isolates documents by position_ids
    (a 2-D all-ones mask there would silently let documents see each other)."""
    implementation = model.config._attn_implementation
    if not needs_dense_mask(implementation):
        return None
    allowed = block_causal_mask(batch.doc_index)
    if implementation == "sdpa":
        return allowed
    return additive_mask(allowed, next(model.parameters()).dtype)


def forward_loss(model, batch: Batch) -> MicroBatchLoss:
    if batch.host_position_ids is not None and _config_holder(model).config._attn_implementation == VARLEN:
        prime_document_buckets(batch.position_ids, batch.host_position_ids)
    inputs = dict(input_ids=batch.input_ids, attention_mask=_attention_mask(_config_holder(model), batch),
                  position_ids=batch.position_ids, use_cache=False)
    # Token t predicts token t+1. The first token of every document is prompt (never a target),
    # so a prediction never crosses from one packed document into the next.
    targets = batch.labels[:, 1:]
    head = find_loss_head(model)
    if head is not None:
        with head.scoring(targets):
            token_loss = model(**inputs).logits.reshape(-1)  # the head returned token losses
    else:
        logits = model(**inputs).logits
        # Score every position against the targets shifted by one (the last against nothing) rather than
        # slicing the logits: a slice of them is a logits-sized copy, and another in backward.
        shifted = F.pad(targets, (0, 1), value=IGNORE_INDEX)
        token_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="none")
        token_loss = token_loss.view(targets.shape[0], -1)[:, :-1].reshape(-1)
    counted = targets.reshape(-1) != IGNORE_INDEX
    owner = batch.doc_index[:, 1:].reshape(-1).clamp(min=0)
    n = len(batch.records)
    record_loss_sum = torch.zeros(n, device=token_loss.device).index_add_(0, owner, token_loss.detach() * counted)
    record_tokens = torch.zeros(n, device=token_loss.device).index_add_(0, owner, counted.float())
    return MicroBatchLoss(token_loss.sum(), record_loss_sum, record_tokens, _last_target_loss(token_loss, counted, owner, n))


def _last_target_loss(token_loss: torch.Tensor, counted: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Per document, the loss on its last target token: the end-of-sequence token every response ends with
    (bonsai.data.template.encode_record). An answer cut off mid-sentence makes it surprising, where the
    mean over the answer's tokens hardly moves. 0 for a document without targets."""
    position = torch.arange(len(token_loss), device=token_loss.device)
    last = torch.full((n,), -1, dtype=torch.long, device=token_loss.device)
    # Uncounted positions carry -1, which amax ignores: no boolean mask, so no host sync on a GPU.
    last.scatter_reduce_(0, owner, torch.where(counted, position, -1), reduce="amax")
    return torch.where(last >= 0, token_loss.detach()[last.clamp(min=0)], torch.zeros_like(last, dtype=token_loss.dtype))


def _config_holder(model):
    """The module whose `.config` says which attention runs (DDP and PEFT wrap it)."""
    inner = getattr(model, "module", model)
    return inner if hasattr(inner, "config") else model


# Loss broken down by category and language: fixed keys, so every rank reduces tensors of one shape.
BREAKDOWN_KEYS = ["all", *(f"{CATEGORY}{c}" for c in CATEGORIES), *(f"{LANGUAGE}{lang}" for lang in LANGUAGES)]
_SLOT = {k: i for i, k in enumerate(BREAKDOWN_KEYS)}
SUMS = ("loss", "tokens", "bytes")  # the columns of a breakdown


def answer_bytes(record: Record) -> int:
    """The UTF-8 bytes of the answer: the denominator of bits per byte, which (unlike loss per token)
    does not depend on how many tokens the tokenizer spends on a character of ja, en or zh."""
    return len(record.output.encode("utf-8"))


def breakdown_sums(records: list[Record], record_loss_sum: torch.Tensor, record_tokens: torch.Tensor) -> torch.Tensor:
    """(len(BREAKDOWN_KEYS), 3) tensor of [loss sum, token count, answer bytes] per key, on the losses' device."""
    device = record_loss_sum.device
    index = torch.tensor(
        [[_SLOT["all"], _SLOT[f"{CATEGORY}{r.category}"], _SLOT[f"{LANGUAGE}{r.lang}"]] for r in records],
        dtype=torch.long, device=device,
    ).reshape(-1)
    # A record without targets (cut by truncation) counts no bytes either.
    answer = torch.tensor([answer_bytes(r) for r in records], dtype=torch.float64, device=device) * (record_tokens > 0)
    values = torch.stack([record_loss_sum.double(), record_tokens.double(), answer], dim=1).repeat_interleave(3, dim=0)
    return torch.zeros(len(BREAKDOWN_KEYS), len(SUMS), dtype=torch.float64, device=device).index_add_(0, index, values)


def breakdown_sums_host(records: list[Record], record_loss_sum: list[float], record_tokens: list[float]) -> list[list[float]]:
    """`breakdown_sums` from values already on the host, in plain Python (the same sums, in the same order)."""
    sums = [[0.0] * len(SUMS) for _ in BREAKDOWN_KEYS]
    for record, loss, tokens in zip(records, record_loss_sum, record_tokens):
        answer = float(answer_bytes(record)) if tokens > 0 else 0.0
        for key in ("all", f"{CATEGORY}{record.category}", f"{LANGUAGE}{record.lang}"):
            row = sums[_SLOT[key]]
            row[0] += loss
            row[1] += tokens
            row[2] += answer
    return sums


def breakdown_metrics(loss_key: str, sums: list[list[float]], bits_key: str) -> dict[str, float]:
    """Mean loss per token (`loss_key`) and bits per byte of the answers (`bits_key`: the loss in nats
    over the answer's tokens, EOS included, / (ln 2 x its UTF-8 bytes)), overall and `_by_category/x`,
    `_by_language/y` where counted."""
    metrics = {}
    for key, (loss_sum, count, answer) in zip(BREAKDOWN_KEYS, sums):
        suffix = "" if key == "all" else key
        if count:
            metrics[loss_key + suffix] = loss_sum / count
        if answer:
            metrics[bits_key + suffix] = loss_sum / (math.log(2) * answer)
    return metrics


def eval_loss_sums(model, batches: list, device, pad_id: int) -> torch.Tensor:
    """(len(BREAKDOWN_KEYS), 3) loss sums, token counts and answer bytes over `batches`, without gradients. A None
    batch is a forward pass that counts for nothing: ZeRO-3 gathers weights inside forward, so every
    rank must run as many as the rank with the most batches (training's eval and `bonsai eval` share it)."""
    sums = torch.zeros(len(BREAKDOWN_KEYS), len(SUMS), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            if batch is None:
                model(input_ids=torch.full((1, 1), pad_id, device=device))
                continue
            batch = batch.to(device)
            out = forward_loss(model, batch)
            sums += breakdown_sums(batch.records, out.record_loss_sum, out.record_tokens)
    model.train(was_training)
    return sums
