"""The logger interface (log, log_rows, close) and its local backends. Only rank 0 builds loggers.

A W&B backend implements the same three methods; the trainer never knows which backends it feeds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from bonsai.io import read_jsonl, write_jsonl
from bonsai import metric_keys as keys
from bonsai.rundir import RunDir


class MetricsLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_rows(self, kind: str, rows: list[dict], step: int) -> None:
        """Rows of a kind (`events`, `generations`): each backend keeps them its own way."""
    def close(self) -> None: ...


def _finite_or_str(v):
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


class JsonlLogger:
    """metrics.jsonl in the run dir: one JSON object per logged step, read back by tests and reports."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_rows_after(resume_step)
        self._file = path.open("a", encoding="utf-8")

    def _drop_rows_after(self, step: int) -> None:
        """Rows past the checkpoint we resume from were logged by a run that then died: they will be
        trained (and logged) again, so keep the file one row per step."""
        if self.path.exists():
            write_jsonl(self.path, [row for row in read_jsonl(self.path) if row.get("step", 0) <= step])

    def log(self, metrics: dict[str, float], step: int) -> None:
        # `time`: wall clock (epoch seconds) when the row was logged, for rates over whole stretches of steps.
        row = {"step": step, "time": round(time.time(), 4), **{k: _finite_or_str(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()


    def log_rows(self, kind: str, rows: list[dict], step: int) -> None:
        pass  # rows have their own files

    def rewind(self, step: int) -> None:
        """After a rollback to `step`, later rows will be trained and logged again."""
        self._file.close()
        self._drop_rows_after(step)
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


class RowFiles:
    """`<kind>.jsonl` in the run dir (events.jsonl, generations.jsonl): one JSON object per row."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._files: dict[str, object] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass


    def log_rows(self, kind: str, rows: list[dict], step: int) -> None:
        if kind not in self._files:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._files[kind] = RunDir(self.run_dir).rows(kind).open("a", encoding="utf-8")
        f = self._files[kind]
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class ConsoleLogger:
    """A progress bar over optimizer steps, with the latest loss; eval results as lines."""

    def __init__(self, total_steps: int, initial_step: int, enabled: bool):
        # Only on a terminal: in a file (a SLURM log, a CI log) a redrawn bar is just noise.
        enabled = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=not enabled, dynamic_ncols=True, unit="step")
        self._step = initial_step

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.bar.update(step - self._step)
        self._step = step
        if keys.TRAIN_LOSS in metrics:
            self.bar.set_postfix(loss=f"{metrics[keys.TRAIN_LOSS]:.4f}",
                                 lr=f"{metrics.get(keys.LEARNING_RATE, 0):.2e}", refresh=False)
        if keys.EVAL_LOSS in metrics:
            self.bar.write(f"step {step}: eval loss {metrics[keys.EVAL_LOSS]:.4f}", file=sys.stderr)


    def log_rows(self, kind: str, rows: list[dict], step: int) -> None:
        if kind == "events":
            for event in rows:
                top = ", ".join(r["id"] for r in event["records"][:3])
                self.bar.write(f"step {event['step']}: {event['kind']} ({event['statistic']} {event['value']}, "
                               f"threshold {event['threshold']}) -> {event['action']}; top records: {top}",
                               file=sys.stderr)
        elif kind == "generations" and rows:
            sample = rows[0]
            self.bar.write(f"step {step}: {len(rows)} probe generations; {sample['id']}: {sample['output'][:60]!r}",
                           file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class FanOut:
    def __init__(self, loggers: list[MetricsLogger]):
        self.loggers = loggers

    def log(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)


    def log_rows(self, kind: str, rows: list[dict], step: int) -> None:
        for lg in self.loggers:
            lg.log_rows(kind, rows, step)

    def rewind(self, step: int) -> None:
        for lg in self.loggers:
            if hasattr(lg, "rewind"):
                lg.rewind(step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(RunDir(run_dir).metrics)
