"""One optimizer step: forward and backward over a rank's micro-batches, then the update.

A function of (model, micro-batches) that tests call alone. The same code serves DDP and every
DeepSpeed ZeRO stage, full fine-tuning and LoRA.
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
    accelerator = dist.accelerator
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
    # DDP and ZeRO average gradients over ranks, and Accelerate (DDP) or DeepSpeed divide every
    # micro-batch's loss by the accumulation steps: scaling by both turns that into the plain sum.
    scale = dist.world_size * len(micro_batches) / target_tokens
    start_at_boundary(accelerator, len(micro_batches))
    loss_sum = torch.zeros((), device=dist.device)
    records, record_loss, record_tokens, record_eos = [], [], [], []
    for batch in micro_batches:
        # `accumulate` skips the gradient all-reduce until the last micro-batch (DDP) or marks the
        # boundary where the DeepSpeed engine reduces, clips and steps.
        with accelerator.accumulate(model):
            out = forward_loss(model, batch.to(dist.device))
            accelerator.backward(out.loss_sum * scale)
        loss_sum += out.loss_sum.detach()
        records += batch.records
        record_loss.append(out.record_loss_sum)
        record_tokens.append(out.record_tokens)
        record_eos.append(out.record_eos_loss)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    # DeepSpeed clips inside its step and reports the norm as a float (None before any step).
    grad_norm = torch.as_tensor(float("nan") if grad_norm is None else grad_norm, device=dist.device)
    return StepStats(dist.sum(loss_sum) / target_tokens, grad_norm, target_tokens, tokens, False, records,
                     torch.cat(record_loss), torch.cat(record_tokens), torch.cat(record_eos))


def start_at_boundary(accelerator, micro_batches: int) -> None:
    """Every optimizer step starts at an accumulation boundary, so the last of its micro-batches is the
    one where gradients are reduced and the optimizer steps. Accelerate counts micro-batches across steps
    (`Accelerator.step`), saves the count with a checkpoint and restores it in `load_state`: a count
    restored under another accumulation (another number of processes, another micro-batch size) put the
    boundary off the last micro-batch for good, and `optimizer.step()` then did nothing, silently."""
    if accelerator.gradient_accumulation_steps != micro_batches:
        raise RuntimeError(f"{micro_batches} micro-batches in a step, but Accelerate accumulates "
                           f"{accelerator.gradient_accumulation_steps}: the trainer and the accelerator disagree")
    accelerator.step = 0


def apply_update(optimizer, scheduler, skip: bool = False) -> None:
    """Step the optimizer, or drop the step's gradients (the update is skipped, the schedule moves on)."""
    if not skip:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_breakdown(dist: Dist, stats: StepStats) -> dict[str, float]:
    """Train loss per category and language, and bits per byte overall and per category and language, for
    this step (a collective: call it on every rank); the overall loss is logged from `StepStats.loss`."""
    sums = breakdown_sums(stats.records, stats.record_loss_sum, stats.record_tokens)
    metrics = breakdown_metrics(TRAIN_LOSS, dist.sum(sums).tolist(), TRAIN_BITS_PER_BYTE)
    return {k: v for k, v in metrics.items() if k != TRAIN_LOSS}


def micro_batches_of(rows: list[Row], size: int, pad_id: int, pad_to: int | None) -> list[Batch]:
    return [collate(rows[i : i + size], pad_id, pad_to) for i in range(0, len(rows), size)]
