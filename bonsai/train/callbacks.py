"""Cross-cutting work around the training loop, each piece with its own state.

The loop (`bonsai.train.trainer`) only takes rows, steps, asks its callbacks and checkpoints. What a callback
learns lives in `state_dict()`, saved in every checkpoint (one JSON file per rank) and loaded on resume:
after a SLURM requeue the spike detector still has its window and trend, the record statistics their
history and the throughput summary its first loss. The shape follows OLMo-core's callbacks (hooks with
their own state) and torchtune's recipes (the loop stays readable).

Every hook runs on every rank at the same point, so a hook may use collectives; hooks that only log
check `trainer.logger`, which exists on rank 0 alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


from bonsai.config import MonitorConfig
from bonsai.io import write_text_atomic
from bonsai import metric_keys as keys
from bonsai.evaluate.generation import Probe, average_by_category, generate, generation_rows
from bonsai.model.loss import breakdown_metrics, eval_loss_sums
from bonsai.errors import TrainingUnstable
from bonsai.observe.monitor import (Event, RecordLossTracker, RunHealth, SpikeDetector, batch_records,
                                     merged_record_stats)
from bonsai.train.step import StepStats, micro_batches_of
from bonsai.data.packing import Row
from bonsai.data.stream import StreamPosition
from bonsai.observe.throughput import flops_per_token, memory_metrics, peak_flops_per_device, training_state_bytes

if TYPE_CHECKING:
    from bonsai.train.trainer import Trainer

THROUGHPUT_WARMUP_STEPS = 2  # first steps pay for allocation and kernel selection; not representative


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
        vocab = trainer.dist.accelerator.unwrap_model(trainer.model).config.vocab_size
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
        # host sync: the monitor must decide before the update whether to apply it.
        loss, grad_norm = stats.loss.item(), stats.grad_norm.item()
        losses, tokens = stats.record_loss_sum.tolist(), stats.record_tokens.tolist()
        self.tracker.update(stats.records, losses, tokens, stats.record_eos_loss.tolist())
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


class DataLogCallback(Callback):
    """RUN_DIR/data_log/rank<r>.jsonl: the ids of the records every step trained, per rank, so a loss
    jump can be traced to its records and a resume (on any number of processes) checked for records
    trained twice or never. Rows past the step a run resumes from belong to an attempt whose weights
    were lost: they are dropped before the first new row, from this rank's file and, on rank 0, from
    the files of ranks this world no longer has."""

    name = "data_log"

    def __init__(self):
        self._opened = False

    def post_step(self, outcome: StepOutcome) -> None:
        run, dist = self.trainer.run, self.trainer.dist
        path = run.data_log(dist.rank)
        if not self._opened:
            self._opened = True
            stale = [path] + ([p for p in run.data_log_dir.glob("rank*.jsonl")
                               if int(p.stem[4:]) >= dist.world_size] if dist.is_main else [])
            for old in stale:
                _drop_rows_from(old, outcome.step)
        documents = [d for row in outcome.rows for d in row.documents]
        row = {"step": outcome.step, "rows": len(outcome.rows), "records": [d.record.id for d in documents],
               "epochs": [d.position.epoch for d in documents], "skipped": outcome.action == "skip"}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _drop_rows_from(path: Path, step: int) -> None:
    """Keep the rows of steps before `step`; a line torn by a killed process is dropped with them."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] < step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(kept))


class ThroughputCallback(Callback):
    """Tokens/s (after warm-up), MFU where the peak is known, and the run's first and last loss."""

    name = "throughput"

    def __init__(self):
        self.timed_tokens, self.timed_seconds = 0, 0.0
        self.first_loss: float | None = None
        self.last_loss: float | None = None

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        self.flops_per_token = flops_per_token(trainer.model, trainer.cfg.data.max_length)
        self.peak_flops = peak_flops_per_device(trainer.cfg.logging.peak_tflops_per_device)

    def step_metrics(self, outcome: StepOutcome) -> dict[str, float]:
        stats, elapsed = outcome.stats, outcome.elapsed_s
        metrics = {keys.TOKENS_PER_SECOND: stats.tokens / elapsed,
                   keys.TARGET_TOKENS_PER_SECOND: stats.target_tokens / elapsed, keys.STEP_SECONDS: elapsed}
        if self.peak_flops:
            world = self.trainer.dist.world_size
            metrics[keys.MFU] = stats.tokens / elapsed * self.flops_per_token / (self.peak_flops * world)
        return metrics

    def post_step(self, outcome: StepOutcome) -> None:
        loss = outcome.metrics.get(keys.TRAIN_LOSS)
        if loss is not None and math.isfinite(loss):
            self.first_loss = loss if self.first_loss is None else self.first_loss
            self.last_loss = loss
        if outcome.step > THROUGHPUT_WARMUP_STEPS:
            self.timed_tokens += outcome.stats.tokens
            self.timed_seconds += outcome.elapsed_s

    def summary(self) -> dict:
        rate = round(self.timed_tokens / self.timed_seconds, 1) if self.timed_seconds else None
        return {"tokens_per_s": rate, "first_loss": self.first_loss, "last_loss": self.last_loss}

    def state_dict(self) -> dict:
        return {"timed_tokens": self.timed_tokens, "timed_seconds": self.timed_seconds,
                "first_loss": self.first_loss, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.timed_tokens, self.timed_seconds = state["timed_tokens"], state["timed_seconds"]
        self.first_loss, self.last_loss = state["first_loss"], state["last_loss"]


class MemoryCallback(Callback):
    """Peak memory every logged step; once, after the first update, each rank's training-state bytes."""

    name = "memory"

    def __init__(self):
        self.accounted = False

    def step_metrics(self, outcome: StepOutcome) -> dict[str, float]:
        return memory_metrics()

    def post_step(self, outcome: StepOutcome) -> None:
        if self.accounted:  # after the first update of this process: the optimizer state exists now
            return
        self.accounted = True
        t = self.trainer
        accounted = training_state_bytes(t.model, t.optimizer, t.dist.zero_stage, t.dist.world_size)
        print(f"rank {t.dist.rank}: " + ", ".join(f"{k.split('/')[1].removesuffix('_bytes')} {v / 2**20:.1f} MiB"
                                                  for k, v in accounted.items()), flush=True)
        if t.logger:
            t.logger.log(accounted, outcome.step)


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


class EvalCallback(PeriodicCallback):
    """Eval loss overall and per category and language, every `eval.every_steps` and at the end."""

    name = "eval"

    def __init__(self):
        self.last: dict[str, float] = {}  # the latest eval's metrics (the model card's results)

    def every(self) -> int:
        return self.trainer.cfg.eval.every_steps

    def _run(self, step: int) -> None:
        t = self.trainer
        metrics = evaluate(t.dist, t.model, t.data.rows("eval", epochs=1), t.cfg, t.tokenizer.pad_token_id)
        self.last = metrics
        if t.logger and metrics:
            t.logger.log(metrics, step)

    def summary(self) -> dict:
        return {"eval_loss": self.last[keys.EVAL_LOSS]} if self.last else {}


def evaluate(dist, model, rows, cfg, pad_id: int) -> dict[str, float]:
    """Mean response-token loss over the eval split, overall and per category and language.
    Every rank runs the same number of forward passes (ZeRO-3 gathers weights inside forward)."""
    pad_to = cfg.data.max_length if cfg.data.packing else None
    batches = micro_batches_of(list(rows), cfg.train.micro_batch_size, pad_id, pad_to)
    if cfg.eval.max_batches:
        batches = batches[: cfg.eval.max_batches]
    rounds = dist.max(len(batches))
    if rounds == 0:
        return {}
    sums = eval_loss_sums(model, batches + [None] * (rounds - len(batches)), dist.device, pad_id)
    # host sync: eval results are logged
    return breakdown_metrics(keys.EVAL_LOSS, dist.sum(sums).tolist(), keys.EVAL_BITS_PER_BYTE)


class ProbeCallback(PeriodicCallback):
    """The fixed probe questions, every `eval.probe_every` steps and at the end. Each rank generates its
    share at the same time, then one gather: no rank waits on another's generation."""

    name = "probes"

    def __init__(self, probes: list[Probe]):
        self.probes = probes

    def every(self) -> int:
        return self.trainer.cfg.eval.probe_every

    def _run(self, step: int) -> None:
        t = self.trainer
        mine = self.probes[t.dist.rank :: t.dist.world_size]
        records = [p.record for p in mine]
        model = t.dist.accelerator.unwrap_model(t.model)
        outputs = generate(model, t.tokenizer, records, t.cfg.eval.decode) if mine else []
        rows = generation_rows(t.tokenizer, records, outputs, [p.reference for p in mine], step)
        rows = sorted((r for per_rank in t.dist.gather_objects(rows) for r in per_rank), key=lambda r: r["id"])
        if t.logger:
            t.logger.log_rows("generations", rows, step)
            t.logger.log(average_by_category(rows, keys.PROBE), step)


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
