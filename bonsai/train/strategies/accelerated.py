"""What DDP and DeepSpeed ZeRO share: Accelerate prepares the model, accumulates, reduces and checkpoints.

Accelerate counts micro-batches across steps (`Accelerator.step`) and saves the count with a checkpoint;
`start_step` puts every step back on its accumulation boundary, so a count restored under another
accumulation (another number of processes, another micro-batch size) cannot move it (issue #29)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch

from bonsai.train.strategies.base import Strategy


class AcceleratedStrategy(Strategy):
    def __init__(self, accelerator, precision: str | None = None):
        self.accelerator = accelerator
        self.precision = precision or accelerator.mixed_precision  # Accelerate applies it here

    def prepare(self, model, optimizer, scheduler):
        return self.accelerator.prepare(model, optimizer, scheduler)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def start_step(self, micro_batches: int) -> None:
        start_at_boundary(self.accelerator, micro_batches)

    def micro_batch(self, model, last: bool) -> AbstractContextManager:
        # `accumulate` skips the gradient all-reduce until the last micro-batch (DDP) or marks the
        # boundary where the DeepSpeed engine reduces, clips and steps.
        return self.accelerator.accumulate(model)

    def backward(self, loss_sum: torch.Tensor, target_tokens: int, micro_batches: int) -> None:
        # DDP and ZeRO average gradients over ranks, and Accelerate (DDP) or DeepSpeed divide every
        # micro-batch's loss by the accumulation steps: scaling by both turns that into the plain sum.
        self.accelerator.backward(loss_sum * (self.accelerator.num_processes * micro_batches / target_tokens))

    def clip_grad_norm(self, model, max_norm: float | None) -> torch.Tensor:
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
        # DeepSpeed clips inside its step and reports the norm as a float (None before any step).
        return torch.as_tensor(float("nan") if norm is None else norm, device=self.accelerator.device)

    def describe_update_state(self) -> str:
        acc = self.accelerator
        return (f" (at the update Accelerate had sync_gradients={acc.sync_gradients}, its micro-step counter at "
                f"{acc.step}, accumulation {acc.gradient_accumulation_steps})")

    def save(self, directory: Path, background: bool = False) -> None:
        self.accelerator.save_state(str(directory), safe_serialization=True)  # always in the foreground

    def load(self, directory: Path) -> None:
        self.accelerator.load_state(str(directory))


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
