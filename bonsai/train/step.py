"""One optimizer step's gradients: forward and backward over a rank's micro-batches, then clipping.

A function of (model, micro-batches) that tests call alone. The same code serves every strategy (DDP,
DeepSpeed ZeRO, FSDP2), full fine-tuning and LoRA: the run's Strategy does the accumulation, backward
and clipping its way, and the update (`Strategy.step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bonsai.train.distributed import Dist
from bonsai.model.loss import breakdown_metrics, breakdown_sums, forward_loss
from bonsai.data.packing import Batch, Row, collate
from bonsai.data.records import Record
from bonsai.metric_keys import TRAIN_BITS_PER_BYTE, TRAIN_LOSS


@dataclass
class StepStats:
    loss: torch.Tensor  # global mean response-token loss of the step (on device; read it only to log)
    grad_norm: torch.Tensor
    target_tokens: int
    tokens: int
    stop_requested: bool
    records: list[Record] = field(default_factory=list)  # this rank's records in the step
    record_loss_sum: torch.Tensor | None = None  # (len(records),) response-token loss sums, on device
    record_tokens: torch.Tensor | None = None
    record_eos_loss: torch.Tensor | None = None  # (len(records),) loss on each record's EOS token


def compute_gradients(dist: Dist, model, micro_batches: list[Batch], max_grad_norm: float | None,
                      stop_requested: bool = False) -> StepStats:
    """Forward and backward over this rank's micro-batches, then clip. Every micro-batch's loss sum is
    divided by the response-token count of the whole step on all ranks, so the gradient is the same
    however the step's rows are split into micro-batches and ranks."""
    strategy = dist.strategy
    local = torch.tensor(
        [sum(b.num_target_tokens for b in micro_batches), sum(int((b.doc_index >= 0).sum()) for b in micro_batches),
         int(stop_requested)],
        dtype=torch.float64, device=dist.device,
    )
    totals = dist.sum(local)
    # host sync: every rank must agree whether to stop before anyone starts a forward pass.
    target_tokens, tokens, stops = (int(v) for v in totals.tolist())
    if stops:
        return StepStats(torch.zeros(()), torch.zeros(()), target_tokens, tokens, stop_requested=True)
    strategy.start_step(len(micro_batches))
    loss_sum = torch.zeros((), device=dist.device)
    records, record_loss, record_tokens, record_eos = [], [], [], []
    for i, batch in enumerate(micro_batches):
        with strategy.micro_batch(model, last=i == len(micro_batches) - 1):
            out = forward_loss(model, batch.to(dist.device))
            strategy.backward(out.loss_sum, target_tokens, len(micro_batches))
        loss_sum += out.loss_sum.detach()
        records += batch.records
        record_loss.append(out.record_loss_sum)
        record_tokens.append(out.record_tokens)
        record_eos.append(out.record_eos_loss)
    grad_norm = strategy.clip_grad_norm(model, max_grad_norm)
    return StepStats(dist.sum(loss_sum) / target_tokens, grad_norm, target_tokens, tokens, False, records,
                     torch.cat(record_loss), torch.cat(record_tokens), torch.cat(record_eos))


def train_breakdown(dist: Dist, stats: StepStats) -> dict[str, float]:
    """Train loss per category and language, and bits per byte overall and per category and language, for
    this step (a collective: call it on every rank); the overall loss is logged from `StepStats.loss`."""
    sums = breakdown_sums(stats.records, stats.record_loss_sum, stats.record_tokens)
    metrics = breakdown_metrics(TRAIN_LOSS, dist.sum(sums).tolist(), TRAIN_BITS_PER_BYTE)
    return {k: v for k, v in metrics.items() if k != TRAIN_LOSS}


def micro_batches_of(rows: list[Row], size: int, pad_id: int, pad_to: int | None) -> list[Batch]:
    return [collate(rows[i : i + size], pad_id, pad_to) for i in range(0, len(rows), size)]
