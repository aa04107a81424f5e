"""Which records each step trained, per rank (`RUN_DIR/data_log/rank*.jsonl`), cut back on a rollback."""

from __future__ import annotations

import json
from pathlib import Path

from bonsai.io import write_text_atomic
from bonsai.train.callbacks.base import Callback, StepOutcome


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
