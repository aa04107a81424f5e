"""Every artifact of a run directory, named once. Writers and readers (the trainer, its callbacks,
`bonsai report`, the SLURM script's helpers) take their paths from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """The resolved config of the run (secrets redacted)."""
        return self.root / "config.yaml"

    def segment_config(self, step: int) -> Path:
        """The resolved config of the stretch of training that started (or resumed) at `step`."""
        return self.root / "config_history" / f"from_step_{step:08d}.yaml"

    @property
    def lock(self) -> Path:
        """Who is training in this run dir (see bonsai.train.lock)."""
        return self.root / ".lock"

    @property
    def tokenizer(self) -> Path:
        """The run's tokenizer, saved at its first start and loaded by every resume."""
        return self.root / "tokenizer"

    @property
    def compile_cache(self) -> Path:
        """torch.compile's code cache (train.compile): a resume on any node finds what was compiled."""
        return self.root / "compile_cache"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def rows(self, kind: str) -> Path:
        """`events.jsonl`, `generations.jsonl`: rows a logger keeps by kind."""
        return self.root / f"{kind}.jsonl"

    @property
    def events(self) -> Path:
        return self.rows("events")

    @property
    def generations(self) -> Path:
        return self.rows("generations")

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.jsonl"

    @property
    def stopped(self) -> Path:
        """Written once a requested stop's checkpoint is complete; slurm/train.sbatch reads it."""
        return self.root / "stopped.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def wandb_run_id(self) -> Path:
        return self.root / "wandb_run_id"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def scan_cache(self) -> Path:
        """The start-up scan's findings per shard, reused by a relaunch (bonsai.data.scan_cache)."""
        return self.root / "scan_cache"

    @property
    def data_log_dir(self) -> Path:
        return self.root / "data_log"

    def data_log(self, rank: int) -> Path:
        """Which records each step trained on this rank (bonsai.train.callbacks.DataLogCallback)."""
        return self.data_log_dir / f"rank{rank}.jsonl"

    @property
    def record_stats_dir(self) -> Path:
        return self.root / "record_stats"

    def record_stats(self, rank: int) -> Path:
        """This rank's per-record loss statistics, as of the latest checkpoint (for the report)."""
        return self.record_stats_dir / f"rank{rank}.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_png(self) -> Path:
        return self.root / "report.png"
