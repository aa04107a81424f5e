"""Checkpoints: written to a temporary directory and renamed into place once every rank is done,
so a crash mid-save leaves the previous checkpoint whole. Keeps the last K.

Layout of `RUN_DIR/checkpoints/step_00000010/`: Accelerate's state (model and optimizer as
safetensors/torch files, scheduler, per-rank RNG), `trainer_state.json` (step, counters, world size,
every rank's data position) and `config.yaml`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bonsai.config import BonsaiConfig, save_resolved
from bonsai.train.distributed import Dist
from bonsai.errors import CheckpointMismatch
from bonsai.io import write_json
from bonsai.rundir import RunDir
from bonsai.data.stream import StreamPosition

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"


@dataclass
class TrainerState:
    step: int = 0
    tokens_seen: int = 0
    target_tokens_seen: int = 0
    world_size: int = 1
    data_positions: list[dict] = field(default_factory=list)
    finished: bool = False
    rollbacks: int = 0
    skipped_steps: int = 0

    def position_for(self, rank: int) -> StreamPosition:
        return StreamPosition.from_dict(self.data_positions[rank])


def checkpoints_dir(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; temporary (half-written) directories are not listed."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(dist: Dist, run_dir: Path, state: TrainerState, cfg: BonsaiConfig, keep: int,
                    write_rank_files: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank calls it. `write_rank_files(dir)` lets each rank add its own files before
    the checkpoint becomes visible. Returns the final directory."""
    root = checkpoints_dir(run_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
        tmp.mkdir(parents=True)
    dist.barrier()
    dist.accelerator.save_state(str(tmp), safe_serialization=True)
    if write_rank_files:
        write_rank_files(tmp)
    dist.barrier()
    if dist.is_main:
        write_json(tmp / STATE_FILE, asdict(state))
        save_resolved(cfg, tmp / "config.yaml")
        if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_checkpoint(dist: Dist, path: Path) -> TrainerState:
    state = TrainerState(**json.loads((path / STATE_FILE).read_text(encoding="utf-8")))
    if state.world_size != dist.world_size:
        raise CheckpointMismatch(
            f"{path} was written by {state.world_size} process(es), this run has {dist.world_size}: "
            f"exact resume needs the same world size (each rank's data position is saved). "
            f"Relaunch with {state.world_size} processes, or start a new output_dir."
        )
    dist.accelerator.load_state(str(path))
    return state
