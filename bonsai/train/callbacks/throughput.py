"""Tokens per second, MFU and memory per step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bonsai import metric_keys as keys
from bonsai.observe.throughput import flops_per_token, memory_metrics, peak_flops_per_device
from bonsai.train.callbacks.base import Callback, StepOutcome

if TYPE_CHECKING:
    from bonsai.train.trainer import Trainer


THROUGHPUT_WARMUP_STEPS = 2  # first steps pay for allocation and kernel selection; not representative


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
        accounted = t.dist.strategy.state_bytes(t.model, t.optimizer, t.dist.world_size)
        print(f"rank {t.dist.rank}: " + ", ".join(f"{k.split('/')[1].removesuffix('_bytes')} {v / 2**20:.1f} MiB"
                                                  for k, v in accounted.items()), flush=True)
        if t.logger:
            t.logger.log(accounted, outcome.step)
