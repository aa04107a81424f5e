"""Loss-instability detection, and the per-record loss statistics that name the data behind it.

Known designs and what this keeps from them: OLMo-core skips a step past mean + 6 sigma of the last
128 steps (a mean and sigma that spikes and a falling trend both inflate; here a short median for the
level and the MAD of step-to-step differences for the noise, which neither inflates); ZClip clips on an EMA z-score of the grad norm; Megatron-LM rejects a loss 10x above the early
maximum (too coarse for SFT, whose loss falls by 5x); PaLM restarted ~100 steps before a spike and
skipped the batches that followed (the `rollback` policy). Decisions are deterministic functions of the
step's global loss and grad norm, so every rank reaches the same one without talking.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bonsai.config import MonitorConfig
from bonsai.io import write_text_atomic
from bonsai.robust import step_noise

ACTION_ORDER = {"warn": 0, "skip": 1, "rollback": 2, "stop": 3}
BAD_STATE = ("nonfinite", "divergence")  # events that say the weights themselves are broken, not the batch


@dataclass
class Event:
    step: int
    kind: str  # loss_spike | grad_spike | nonfinite | trend
    severity: float  # how far past the threshold: value / threshold (inf for non-finite)
    statistic: str
    value: float
    threshold: float
    action: str
    records: list[dict] = field(default_factory=list)  # the step's records, highest loss first
    data_positions: list[dict] = field(default_factory=list)  # every rank's stream position after the step

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("severity", "value", "threshold"):
            if not math.isfinite(d[key]):
                d[key] = str(d[key])
        return d


LEVEL_STEPS = 8  # the recent level is the median of this many steps: it follows a falling loss


def robust_z(value: float, history) -> float:
    """How many noise-sigmas `value` sits above the recent level. The level is the median of the last
    few steps and the noise comes from the MAD of step-to-step differences, so a loss that is still
    falling fast (as SFT losses do) neither hides a spike nor looks like one."""
    history = list(history)
    level = statistics.median(history[-LEVEL_STEPS:])
    noise = step_noise(history)
    # A floor on the scale: a run of near-identical values must not turn rounding into a "spike".
    return (value - level) / max(noise, 1e-3 * abs(level), 1e-8)


def slope(values) -> float:
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    return cov / sum((i - mean_x) ** 2 for i in range(n))


class SpikeDetector:
    def __init__(self, cfg: MonitorConfig, vocab_size: int | None = None):
        self.cfg = cfg
        # The loss of a uniform guess: a model above it (by divergence_ratio) predicts worse than knowing
        # nothing, whatever it started from (a random init starts near it, a pretrained model far below).
        self.uniform_loss = math.log(vocab_size) if vocab_size else None
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.grad_norms: deque[float] = deque(maxlen=cfg.window)
        self.trend: deque[float] = deque(maxlen=max(cfg.trend_window, 1))
        self.trend_flagged = False
        self.steps_seen = 0

    def state_dict(self) -> dict:
        """What the detector has learned: saved in checkpoints, so a resume does not start it blind."""
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "trend": list(self.trend),
                "trend_flagged": self.trend_flagged, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state["losses"])
        self.grad_norms.extend(state["grad_norms"])
        self.trend.extend(state["trend"])
        self.trend_flagged, self.steps_seen = state["trend_flagged"], state["steps_seen"]

    def check(self, step: int, loss: float, grad_norm: float) -> list[Event]:
        cfg = self.cfg
        self.steps_seen += 1
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            bad, value = ("loss", loss) if not math.isfinite(loss) else ("grad_norm", grad_norm)
            return [Event(step, "nonfinite", math.inf, bad, value, math.inf, cfg.on_nonfinite)]
        if self.uniform_loss and loss > cfg.divergence_ratio * self.uniform_loss:
            bound = cfg.divergence_ratio * self.uniform_loss
            return [Event(step, "divergence", loss / bound, "loss_over_uniform_guess", loss, bound, cfg.on_divergence)]
        events = []
        armed = self.steps_seen > cfg.warmup_steps and len(self.losses) >= 8
        loss_z = robust_z(loss, self.losses) if armed else 0.0
        grad_z = robust_z(grad_norm, self.grad_norms) if armed else 0.0
        if loss_z > cfg.loss_z:
            events.append(Event(step, "loss_spike", loss_z / cfg.loss_z, "loss_robust_z", loss_z, cfg.loss_z,
                                cfg.on_loss_spike))
        if grad_z > cfg.grad_z:
            events.append(Event(step, "grad_spike", grad_z / cfg.grad_z, "grad_norm_robust_z", grad_z, cfg.grad_z,
                                cfg.on_grad_spike))
        # Spikes stay out of the baseline, or one spike would hide the next.
        if loss_z <= cfg.loss_z:
            self.losses.append(loss)
        if grad_z <= cfg.grad_z:
            self.grad_norms.append(grad_norm)
        if cfg.trend_window:
            events += self._check_trend(step, loss)
        return events

    def _check_trend(self, step: int, loss: float) -> list[Event]:
        self.trend.append(loss)
        if len(self.trend) < self.cfg.trend_window or self.steps_seen <= self.cfg.warmup_steps:
            return []
        per_step = slope(self.trend)
        drop = -per_step * (len(self.trend) - 1)  # how much the fitted line fell over the window
        noise = step_noise(list(self.trend))
        if self.trend_flagged:
            # Re-arm only once the loss is clearly falling again, so a flat curve is reported once.
            if drop > 2 * noise:
                self.trend_flagged = False
            return []
        if drop > 0:
            return []
        self.trend_flagged = True
        return [Event(step, "trend", 1.0, "loss_slope_per_step", per_step, 0.0, "warn")]


@dataclass
class RunHealth:
    """Whether the weights are in a state the monitor trusts. A step's loss is computed on the weights the
    step before left, so a non-finite or diverged loss at step s condemns those weights, and only a clean
    step confirms the weights before it. No checkpoint is written from a condemned state."""

    bad_since: int | None = None  # first step of the current run of non-finite or diverged losses
    skipped_in_a_row: int = 0
    last_clean: int = 0  # the newest step whose loss was clean: the weights before it are trusted

    def update(self, step: int, events: list[Event], action: str | None) -> None:
        if any(e.kind in BAD_STATE for e in events):
            self.bad_since = self.bad_since or step
        else:
            self.bad_since, self.last_clean = None, step
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if action == "skip" else 0

    def problem(self) -> str | None:
        """Why the current weights must not be saved, or None."""
        if self.bad_since is None:
            return None
        return f"the loss has been non-finite or diverged since step {self.bad_since}"

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.bad_since, self.skipped_in_a_row, self.last_clean = (state["bad_since"], state["skipped_in_a_row"],
                                                                 state["last_clean"])


def strongest_action(events: list[Event]) -> str | None:
    return max((e.action for e in events), key=ACTION_ORDER.__getitem__, default=None)


@dataclass
class RecordStats:
    category: str
    lang: str
    seen: int = 0
    loss_sum: float = 0.0  # of per-token mean losses, one per appearance
    last_loss: float = 0.0
    ema_loss: float | None = None
    # The run's whole course, not only its end (dataset cartography, Swayamdipta et al. 2020: a record
    # the model stays unsure of while its peers are learned is often mislabelled):
    loss_sq_sum: float = 0.0  # of the same per-appearance losses, for their spread
    eos_seen: int = 0  # appearances whose end-of-sequence token was scored
    eos_loss_sum: float = 0.0  # loss on the EOS token: high where the answer stops where answers do not
    tokens: int = 0  # response tokens of the record (EOS included), for its bits per byte

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.seen

    @property
    def loss_std(self) -> float:
        return math.sqrt(max(self.loss_sq_sum / self.seen - self.mean_loss ** 2, 0.0))

    @property
    def mean_eos_loss(self) -> float | None:
        return self.eos_loss_sum / self.eos_seen if self.eos_seen else None


class RecordLossTracker:
    """Per record: how often it was trained on, its per-token loss (last, mean, spread, EMA) and the loss on
    its end-of-sequence token. Each rank tracks the records it trained; `bonsai report` merges the ranks' files."""

    EMA = 0.5  # recent appearances count most: by then clean records have been learned

    def __init__(self):
        self.records: dict[str, RecordStats] = {}

    def update(self, records, losses: list[float], tokens: list[float], eos_losses: list[float] | None = None) -> None:
        for i, (record, loss_sum, count) in enumerate(zip(records, losses, tokens)):
            if not count:
                continue
            loss = loss_sum / count
            s = self.records.setdefault(record.id, RecordStats(record.category, record.lang))
            s.seen += 1
            s.loss_sum += loss
            s.loss_sq_sum += loss * loss
            s.last_loss = loss
            s.tokens = int(count)
            s.ema_loss = loss if s.ema_loss is None else self.EMA * s.ema_loss + (1 - self.EMA) * loss
            if eos_losses is not None:
                s.eos_seen += 1
                s.eos_loss_sum += eos_losses[i]

    def state_dict(self) -> dict:
        return {k: asdict(v) for k, v in self.records.items()}

    def load_state_dict(self, state: dict) -> None:
        self.records = {k: RecordStats(**v) for k, v in state.items()}

    def save(self, path: Path) -> None:
        """The copy `bonsai report` reads (the checkpoint holds its own, in the callbacks' state)."""
        write_text_atomic(path, json.dumps(self.state_dict()))


def merged_record_stats(states: list[dict[str, dict]]) -> dict[str, dict]:
    """Several ranks' tracker states as one: within an epoch a record is on one rank, so for each record
    the rank that saw it most holds its history (as `bonsai report` merges the ranks' files)."""
    merged: dict[str, dict] = {}
    for state in states:
        for rid, stats in state.items():
            if rid not in merged or stats["seen"] > merged[rid]["seen"]:
                merged[rid] = stats
    return merged


def batch_records(records, losses: list[float], tokens: list[float]) -> list[dict]:
    """The step's records as event rows: id, category, language, per-token loss, token count."""
    return [
        {"id": r.id, "category": r.category, "lang": r.lang, "loss": loss / count, "tokens": int(count)}
        for r, loss, count in zip(records, losses, tokens)
        if count
    ]
