"""The spike and divergence detector and the per-record loss statistics, as a callback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bonsai.config import MonitorConfig
from bonsai.data.stream import StreamPosition
from bonsai.errors import TrainingUnstable
from bonsai.observe.monitor import (
    Event,
    RecordLossTracker,
    RunHealth,
    SpikeDetector,
    batch_records,
    merged_record_stats,
)
from bonsai.train.callbacks.base import Callback, StepOutcome
from bonsai.train.step import StepStats

if TYPE_CHECKING:
    from bonsai.train.trainer import Trainer


class MonitorCallback(Callback):
    """The instability detector and the per-record loss statistics behind `bonsai report`."""

    name = "monitor"

    def __init__(self, cfg: MonitorConfig):
        self.cfg = cfg
        self.detector = SpikeDetector(cfg)
        self.tracker = RecordLossTracker()
        self.health = RunHealth()

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        vocab = trainer.dist.strategy.unwrap(trainer.model).config.vocab_size
        self.detector = SpikeDetector(self.cfg, vocab)

    def post_step(self, outcome: StepOutcome) -> None:
        """Track the weights' health; a run whose updates keep being skipped is not recovering: stop it."""
        self.health.update(outcome.step, outcome.events, outcome.action)
        skipped = self.health.skipped_in_a_row
        if skipped >= self.cfg.max_skipped_in_a_row:
            kinds = sorted({e.kind for e in outcome.events})
            raise TrainingUnstable(
                f"steps {outcome.step - skipped + 1}-{outcome.step}: {skipped} updates skipped in a row "
                f"(monitor.max_skipped_in_a_row; the last for {', '.join(kinds) or 'a spike'}): the run is not "
                f"recovering. Last healthy checkpoint: {self.trainer.last_healthy_checkpoint() or 'none'}; "
                f"train again with a lower train.lr or a longer warm-up (a new train.output_dir)")

    def checkpoint_veto(self) -> str | None:
        return self.health.problem()

    def trusted_before(self) -> int | None:
        return self.health.last_clean

    def on_rollback(self, step: int) -> None:
        self.health = RunHealth(last_clean=step + 1)  # the checkpoint's weights were confirmed by step + 1

    def judge(self, step: int, stats: StepStats, position: StreamPosition) -> list[Event]:
        dist = self.trainer.dist
        # The step's one host sync (shared with the metrics row): the monitor must decide before the update.
        host = stats.host()
        loss, grad_norm, losses, tokens = host.loss, host.grad_norm, host.record_loss_sum, host.record_tokens
        self.tracker.update(stats.records, losses, tokens, host.record_eos_loss)
        events = self.detector.check(step, loss, grad_norm)
        if events:  # every rank reached the same decision from the same global values: a safe collective
            gathered = dist.gather_objects((batch_records(stats.records, losses, tokens), position.to_dict()))
            rows = sorted((r for per_rank, _ in gathered for r in per_rank), key=lambda r: r["loss"], reverse=True)
            for event in events:
                event.records, event.data_positions = rows, [p for _, p in gathered]
        return events

    def state_dict(self) -> dict:
        return {"detector": self.detector.state_dict(), "records": self.tracker.state_dict(),
                "health": self.health.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state["detector"])
        self.tracker.load_state_dict(state["records"])
        if "health" in state:
            self.health.load_state_dict(state["health"])

    def state_after_resize(self, states: list[dict | None], rank: int) -> dict | None:
        """The detector's history is global (rank 0's, on every rank); each old rank's record statistics
        go to rank 0, which then holds the run's history of every record (`bonsai report` merges ranks)."""
        if states[0] is None:
            return None
        records = merged_record_stats([s["records"] for s in states if s]) if rank == 0 else {}
        return {**states[0], "records": records}

    def on_checkpoint(self, directory: Path) -> None:
        t = self.trainer
        self.tracker.save(t.run.record_stats(t.dist.rank))
        if t.dist.is_main:  # the files of ranks this world no longer has: their records are rank 0's now
            for old in t.run.record_stats_dir.glob("rank*.json"):
                if int(old.stem[4:]) >= t.dist.world_size:
                    old.unlink()
