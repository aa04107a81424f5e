"""The Weights & Biases backend of the logger interface. Rank 0 only; a resumed run continues the same
W&B run (its id is kept in the run dir). The API key is read by wandb from the environment and never
passes through Bonsai's config or logs."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from bonsai.config import WandbConfig
from bonsai import metric_keys as keys
from bonsai.rundir import RunDir

GENERATION_COLUMNS = ["step", "id", "category", "lang", "prompt", "output", "reference", "metrics"]
EVENT_COLUMNS = ["step", "kind", "severity", "statistic", "value", "threshold", "action", "top_records"]


def _text(number) -> str:
    return f"{number:.4g}" if isinstance(number, (int, float)) else str(number)


def resolve_mode(cfg: WandbConfig) -> str:
    """`auto`: W&B's own WANDB_MODE when it is set (online, offline, disabled), else online with an
    API key and offline without one."""
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def default_group(run_dir: Path) -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else run_dir.name


class WandbLogger:
    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict, say=print):
        import wandb

        self._wandb, self._say = wandb, say
        self.mode = resolve_mode(cfg)
        id_file = RunDir(run_dir).wandb_run_id
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or run_dir.name,
            group=cfg.group or default_group(run_dir),
            tags=list(cfg.tags),
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=self.mode,
        )
        id_file.write_text(run_id)
        # Bonsai's own step is the x-axis: it goes back after a rollback, which W&B's _step cannot.
        self.run.define_metric(keys.STEP)
        self.run.define_metric("*", step_metric=keys.STEP)
        self._events: list[list] = []
        self._generations: list[list] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, keys.STEP: step})


    def log_rows(self, kind: str, rows: list[dict], step: int) -> None:
        if kind == "events":
            for event in rows:
                self._log_event(event)
        elif kind == "generations":
            self._generations += [[r["step"], r["id"], r["category"], r["lang"], r["prompt"], r["output"],
                                   r["reference"] or "", json.dumps(r["metrics"])] for r in rows]
            self.run.log({"probes": self._wandb.Table(columns=GENERATION_COLUMNS, data=self._generations),
                          keys.STEP: step})

    def _log_event(self, event: dict) -> None:
        value, threshold, severity = (_text(event[k]) for k in ("value", "threshold", "severity"))
        top = ", ".join(f"{r['id']} ({r['category']}/{r['lang']}, {r['loss']:.2f})" for r in event["records"][:5])
        # Text for the numbers: non-finite values arrive as "nan"/"inf", and a W&B column keeps one type.
        self._events.append([event["step"], event["kind"], severity, event["statistic"], value, threshold,
                             event["action"], top])
        # Tables are immutable in W&B: log the whole (small) table again so the latest holds every event.
        self.run.log({"events": self._wandb.Table(columns=EVENT_COLUMNS, data=self._events),
                      keys.STEP: event["step"]})
        self._wandb.alert(
            title=f"bonsai: {event['kind']} at step {event['step']}",
            text=f"{event['statistic']} = {value} (threshold {threshold}); "
                 f"action: {event['action']}; top records: {top}",
            level=self._wandb.AlertLevel.WARN,
        )

    def close(self) -> None:
        run_path = self.run.dir
        self.run.finish()
        if self.mode == "offline":
            self._say(f"W&B run saved offline; upload it with: wandb sync {Path(run_path).parent}")
