"""One optimizer step's gradients: forward and backward over a rank's micro-batches, then clipping.

A function of (model, micro-batches) that tests call alone. The same code serves every strategy (DDP,
DeepSpeed ZeRO, FSDP2), full fine-tuning and LoRA: the run's Strategy does the accumulation, backward
and clipping its way, and the update (`Strategy.step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bonsai.train.distributed import Dist
from bonsai.model.loss import breakdown_metrics, breakdown_sums_host, forward_loss
from bonsai.data.packing import Batch, Row, collate
from bonsai.data.records import Record
from bonsai.metric_keys import TRAIN_BITS_PER_BYTE, TRAIN_LOSS


@dataclass(frozen=True)
class HostStats:
    """A step's values on the host, read in one transfer (`StepStats.host`)."""

    loss: float
    grad_norm: float
    record_loss_sum: list[float]
    record_tokens: list[float]
    record_eos_loss: list[float]


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
    _host: HostStats | None = field(default=None, repr=False)

    def host(self) -> HostStats:
        """The step's scalars and per-record sums on the host. One host sync per step, shared by the monitor
        (which must judge before the update) and the metrics row: on a GPU each `.item()`/`.tolist()` is a
        wait for the device, so they are read together, once, as float64 (exact for fp32 values)."""
        if self._host is None:
            n = len(self.records)
            parts = [self.loss.reshape(1), self.grad_norm.reshape(1)]
            if n:
                parts += [self.record_loss_sum, self.record_tokens, self.record_eos_loss]
            values = torch.cat([p.detach().double().to(self.loss.device) for p in parts]).tolist()
            rest = values[2:]
            self._host = HostStats(values[0], values[1], rest[:n], rest[n:2 * n], rest[2 * n:])
        return self._host


def compute_gradients(dist: Dist, model, micro_batches: list[Batch], max_grad_norm: float | None,
                      stop_requested: bool = False) -> StepStats:
    """Forward and backward over this rank's micro-batches, then clip. Every micro-batch's loss sum is
    divided by the response-token count of the whole step on all ranks, so the gradient is the same
    however the step's rows are split into micro-batches and ranks."""
    strategy = dist.strategy
    target_tokens, tokens, stops = step_totals(dist, micro_batches, stop_requested)
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


def step_totals(dist: Dist, micro_batches: list[Batch], stop_requested: bool) -> tuple[int, int, int]:
    """Response tokens, real tokens and stop requests of the step over all ranks. The batches are still on
    the host: one process needs no device at all; several sum on the device (a collective), then one host
    sync, since every rank must agree whether to stop before anyone starts a forward pass."""
    local = [sum(b.num_target_tokens for b in micro_batches), sum(b.num_tokens for b in micro_batches),
             int(stop_requested)]
    if dist.world_size == 1:
        return local[0], local[1], local[2]
    totals = dist.sum(torch.tensor(local, dtype=torch.float64, device=dist.device))
    target_tokens, tokens, stops = (int(v) for v in totals.tolist())
    return target_tokens, tokens, stops


def train_breakdown(dist: Dist, stats: StepStats) -> dict[str, float]:
    """Train loss per category and language, and bits per byte overall and per category and language, for
    this step (a collective: call it on every rank); the overall loss is logged from `StepStats.loss`."""
    host = stats.host()
    # From the values the monitor read already: on one process no further host sync; on several, the
    # collective's result is read once.
    sums = breakdown_sums_host(stats.records, host.record_loss_sum, host.record_tokens)
    if dist.world_size > 1:
        sums = dist.sum(torch.tensor(sums, dtype=torch.float64, device=dist.device)).tolist()
    metrics = breakdown_metrics(TRAIN_LOSS, sums, TRAIN_BITS_PER_BYTE)
    return {k: v for k, v in metrics.items() if k != TRAIN_LOSS}


def micro_batches_of(rows: list[Row], size: int, pad_id: int, pad_to: int | None) -> list[Batch]:
    return [collate(rows[i : i + size], pad_id, pad_to) for i in range(0, len(rows), size)]
