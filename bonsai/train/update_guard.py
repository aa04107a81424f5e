"""Every update Bonsai means to apply is applied, or the run stops.

An optimizer step that silently does nothing (a missed accumulation boundary, an engine that decided
on its own) leaves a run that logs falling-looking losses, learning rates and grad norms while the
weights stay frozen. The guard counts the steps the real optimizer takes (torch's global step hook: it
fires for AdamW under DDP, inside DeepSpeed's ZeRO optimizers and for DeepSpeedCPUAdam alike, however
they are wrapped) and compares, after every step, with what the trainer decided. Its cost is one
Python call per optimizer step; no tensor is read.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.optim.optimizer import register_optimizer_step_post_hook

from bonsai.errors import UpdateNotApplied


class UpdateGuard:
    def __init__(self):
        self.calls = 0  # real optimizer steps since the last check (ZeRO steps once per parameter group)
        self.last_applied = 0  # the last step whose update was seen
        self._handle = register_optimizer_step_post_hook(self._count)

    def _count(self, optimizer, args, kwargs) -> None:
        self.calls += 1

    def check(self, step: int, skipped: bool, why_not: Callable[[], str] = str) -> None:
        """After step `step`'s update: raise UpdateNotApplied if the optimizer did not step although
        the trainer did not skip the step (or stepped although it did). `why_not()` describes the
        state that explains it, asked only then."""
        calls, self.calls = self.calls, 0
        if skipped and calls:
            raise UpdateNotApplied(f"step {step}: the optimizer applied an update that Bonsai skipped{why_not()}")
        if not skipped and not calls:
            since = f"since step {self.last_applied}" if self.last_applied else "since the run started"
            raise UpdateNotApplied(
                f"step {step}: the optimizer applied no update although Bonsai did not skip it; the weights "
                f"are unchanged {since}{why_not()}. This is a bug: please report it with `bonsai env` and this log")
        if not skipped:
            self.last_applied = step

    def forget(self, step: int) -> None:
        """After a rollback to `step`: the updates counted belong to weights that were just replaced."""
        self.calls, self.last_applied = 0, step

    def close(self) -> None:
        self._handle.remove()
