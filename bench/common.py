"""What the benchmark scripts share: a free port for `accelerate launch`, and a run's per-step rows."""

from __future__ import annotations

import socket
from pathlib import Path

from bonsai.metrics import read_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl's training rows (those with a loss) by step."""
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}
