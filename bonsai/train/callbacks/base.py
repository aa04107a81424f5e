"""The hooks a callback may implement, and the list of them the trainer calls.

The loop (`bonsai.train.trainer`) only takes rows, steps, asks its callbacks and checkpoints. What a callback
learns lives in `state_dict()`, saved in every checkpoint (one JSON file per rank) and loaded on resume:
after a SLURM requeue the spike detector still has its window and trend, the record statistics their
history and the throughput summary its first loss. The shape follows OLMo-core's callbacks (hooks with
their own state) and torchtune's recipes (the loop stays readable).

Every hook runs on every rank at the same point, so a hook may use collectives; hooks that only log
check `trainer.logger`, which exists on rank 0 alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bonsai.data.packing import Row
from bonsai.data.stream import StreamPosition
from bonsai.observe.monitor import Event
from bonsai.train.step import StepStats

if TYPE_CHECKING:
    from bonsai.train.trainer import Trainer


@dataclass
class StepOutcome:
    """One optimizer step, as the callbacks see it once its update is applied (or skipped)."""

    step: int
    stats: StepStats
    elapsed_s: float
    action: str | None  # None (applied) or "skip"
    events: list[Event] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)  # this rank's rows of the step
    metrics: dict[str, float] = field(default_factory=dict)  # the row logged for this step ({} when not logged)


class Callback:
    """No-op hooks; a callback overrides what it needs."""

    name = "callback"

    def setup(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def judge(self, step: int, stats: StepStats, position: StreamPosition) -> list[Event]:
        """Before the update: events whose actions may skip the step or roll back."""
        return []

    def step_metrics(self, outcome: StepOutcome) -> dict[str, float]:
        """This callback's part of a logged step's metrics row."""
        return {}

    def post_step(self, outcome: StepOutcome) -> None:
        """After the update and the metrics row (evaluations, one-off accounting)."""

    def on_checkpoint(self, directory: Path) -> None:
        """While a checkpoint is written, before it becomes visible."""

    def on_fit_end(self, step: int) -> None:
        """After the last step, before the final checkpoint."""

    def checkpoint_veto(self) -> str | None:
        """Why the current state must not be saved (the monitor judged it bad), or None."""
        return None

    def trusted_before(self) -> int | None:
        """The step before which this callback trusts the weights (None: it does not judge them)."""
        return None

    def on_rollback(self, step: int) -> None:
        """The trainer went back to the checkpoint of `step`."""

    def summary(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def state_after_resize(self, states: list[dict | None], rank: int) -> dict | None:
        """This rank's state when the checkpoint was written by `len(states)` ranks and this run has
        another number: by default rank 0's (what every rank holds alike, since every rank sees the same
        global values). A callback with per-rank state merges it."""
        return states[0]




class PeriodicCallback(Callback):
    """Work done every `every()` steps and once at the end (the last step's turn is the end's)."""

    def every(self) -> int:
        raise NotImplementedError

    def post_step(self, outcome: StepOutcome) -> None:
        every = self.every()
        if every and outcome.step % every == 0 and outcome.step < self.trainer.cfg.train.max_steps:
            self._run(outcome.step)

    def on_fit_end(self, step: int) -> None:
        self._run(step)

    def _run(self, step: int) -> None:
        raise NotImplementedError




class Callbacks:
    """The trainer's callbacks, called in order; their states keyed by name in each checkpoint."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def setup(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.setup(trainer)

    def judge(self, step: int, stats: StepStats, position: StreamPosition) -> list[Event]:
        return [event for cb in self.callbacks for event in cb.judge(step, stats, position)]

    def step_metrics(self, outcome: StepOutcome) -> dict[str, float]:
        return {k: v for cb in self.callbacks for k, v in cb.step_metrics(outcome).items()}

    def post_step(self, outcome: StepOutcome) -> None:
        for cb in self.callbacks:
            cb.post_step(outcome)

    def on_checkpoint(self, directory: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(directory)

    def on_fit_end(self, step: int) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(step)

    def summary(self) -> dict:
        return {k: v for cb in self.callbacks for k, v in cb.summary().items()}

    def checkpoint_veto(self) -> str | None:
        return next((why for cb in self.callbacks if (why := cb.checkpoint_veto())), None)

    def trusted_before(self) -> int | None:
        trusted = [t for cb in self.callbacks if (t := cb.trusted_before()) is not None]
        return min(trusted, default=None)

    def on_rollback(self, step: int) -> None:
        for cb in self.callbacks:
            cb.on_rollback(step)

    def find(self, name: str) -> Callback | None:
        return next((cb for cb in self.callbacks if cb.name == name), None)

    def state_dict(self) -> dict:
        return {cb.name: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, states: dict) -> None:
        for cb in self.callbacks:
            if cb.name in states:
                cb.load_state_dict(states[cb.name])

    def load_resized(self, states: list[dict], rank: int) -> None:
        """Every old rank's states (`states[r]`, {} where a rank wrote none), for a run on another
        number of ranks: each callback decides what this rank takes."""
        for cb in self.callbacks:
            state = cb.state_after_resize([s.get(cb.name) for s in states], rank)
            if state is not None:
                cb.load_state_dict(state)
