"""Checkpoints: written to a temporary directory and renamed into place once every rank is done,
so a crash mid-save leaves the previous checkpoint whole. Keeps the last K.

Layout of `RUN_DIR/checkpoints/step_00000010/`: the strategy's files (DDP and ZeRO: Accelerate's state,
model and optimizer as safetensors/torch files; FSDP2: a DCP directory of every rank's shards; and the
scheduler and per-rank RNG), `trainer_state.json` (step, counters, world size, the strategy's layout,
every rank's data position), `config.yaml`, and, written last, `checkpoint.json`: every file and its
size. A checkpoint is used only if it verifies against it; a bad newest one is reported and the newest
one that verifies is used instead.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bonsai.config import BonsaiConfig, save_resolved
from bonsai.train.distributed import Dist
from bonsai.train.strategies.base import Layout
from bonsai.errors import CheckpointWriteError
from bonsai.io import check_manifest, disk_full, write_json, write_manifest
from bonsai.rundir import RunDir
from bonsai.data.stream import StreamPosition

STATE_FILE = "trainer_state.json"
MANIFEST = "checkpoint.json"  # written last: the checkpoint's files and their sizes
_STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"


@dataclass
class TrainerState:
    step: int = 0
    tokens_seen: int = 0
    target_tokens_seen: int = 0
    world_size: int = 1
    data_positions: list[dict] = field(default_factory=list)
    data_layouts: dict[str, dict] = field(default_factory=dict)  # bonsai.data.elastic, per epoch
    global_batch: int = 0  # rows per optimizer step, all ranks: kept when the world size changes
    layout: dict | None = None  # the strategy's Layout (bonsai.train.strategies.base): how the files hold the state
    zero_stage: int | None = None  # older checkpoints: 0 DDP, else the ZeRO stage (None: not recorded)
    offload: bool | None = None  # older checkpoints: ZeRO's optimizer on the CPU
    finished: bool = False
    rollbacks: int = 0
    skipped_steps: int = 0
    data_shards: dict[str, dict] = field(default_factory=dict)  # every shard's identity (bonsai.data.identity)
    model_source: str = ""  # the checkpoint the run started from (tiny-phi: the directory built for it)

    def position_for(self, rank: int) -> StreamPosition:
        return StreamPosition.from_dict(self.data_positions[rank])

    def saved_layout(self) -> Layout | None:
        """The layout the checkpoint was written under; None for one written before Bonsai recorded it."""
        return Layout.from_saved(self.layout, self.zero_stage, self.offload)


def checkpoints_dir(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def checkpoint_step(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories, oldest first, verified or not; temporary (half-written) ones are not listed."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint (one line), or None if every file is there at its size."""
    return check_manifest(path, MANIFEST)


def find_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and one line for each newer one that does not."""
    problems = []
    for path in reversed(list_checkpoints(run_dir)):
        why = verify_checkpoint(path)
        if why is None:
            return path, problems
        problems.append(f"{path}: {why}")
    return None, problems


def latest_checkpoint(run_dir: Path) -> Path | None:
    return find_checkpoint(run_dir)[0]


def checkpoint_bytes(path: Path) -> int:
    """A verified checkpoint's size, from its manifest (0 if unknown)."""
    try:
        return sum(json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"].values())
    except (OSError, ValueError, KeyError):
        return 0


def _previous_size(run_dir: Path) -> tuple[Path | None, int]:
    """The last complete checkpoint and its size: what the next save will need, about."""
    latest = latest_checkpoint(run_dir)
    return latest, checkpoint_bytes(latest) if latest else 0


def free_space_warning(run_dir: Path, estimate: int = 0) -> str | None:
    """Said before a save when the disk cannot hold another checkpoint the size of the last one (or, before
    the first, of `estimate`)."""
    needed = _previous_size(run_dir)[1] or estimate
    free = shutil.disk_usage(run_dir).free
    if needed and free < needed:
        return (f"{checkpoints_dir(run_dir)}: {free / 2**20:,.0f} MiB free, a checkpoint takes about "
                f"{needed / 2**20:,.0f} MiB: the next save will likely fail (free space, or lower train.keep_checkpoints)")
    return None


def save_checkpoint(dist: Dist, run_dir: Path, state: TrainerState, cfg: BonsaiConfig, keep: int,
                    write_rank_files: Callable[[Path], None] | None = None, trusted_before: int | None = None,
                    estimate: int = 0, background: bool = False) -> Path | PendingCheckpoint:
    """Collective: every rank calls it. `write_rank_files(dir)` lets each rank add its own files before
    the checkpoint becomes visible. Returns the final directory, or with `background` (a strategy that
    saves in the background) a PendingCheckpoint to finish later. A full disk removes the partial save
    and raises CheckpointWriteError naming the last complete checkpoint. Keeps the newest `keep`, and the
    newest one from before step `trusted_before` (the last healthy one) whatever `keep` says. `estimate`:
    the bytes the save will need when there is no earlier checkpoint to go by."""
    final = checkpoints_dir(run_dir) / f"step_{state.step:08d}"
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    space = _SpaceCheck(run_dir, tmp, state.step, estimate)
    saved_state = asdict(state)  # as it is now: the trainer goes on while a background write runs

    def publish() -> Path:
        with space:
            return _publish(dist, run_dir, saved_state, cfg, final, tmp, keep, trusted_before)

    with space:
        write = _start(dist, write_rank_files, tmp, background and dist.strategy.saves_in_background)
    if write is None:
        return publish()
    return PendingCheckpoint(state.step, write, publish, space)


@dataclass
class PendingCheckpoint:
    """A checkpoint whose strategy files a background thread is still writing. It stays under its
    temporary name, invisible to a resume, until `finish()` (every rank) has waited for the write and
    published it."""

    step: int
    write: Future
    publish: Callable[[], Path]
    space: _SpaceCheck

    def finish(self) -> Path:
        with self.space:
            self.write.result()
        return self.publish()


class _SpaceCheck:
    """Turns a full disk during a save into CheckpointWriteError, the partial save removed."""

    def __init__(self, run_dir: Path, tmp: Path, step: int, estimate: int):
        self.run_dir, self.tmp, self.step = run_dir, tmp, step
        self.previous, needed = _previous_size(run_dir)
        self.needed = needed or estimate

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, traceback) -> None:
        if err is None or not disk_full(err):  # OSError, torch's RuntimeError, safetensors' SafetensorError
            return
        shutil.rmtree(self.tmp, ignore_errors=True)  # the partial save would keep the space
        free = shutil.disk_usage(self.run_dir).free
        raise CheckpointWriteError(
            f"no space left on device while writing checkpoint step {self.step} to {self.tmp.parent} (needed "
            f"~{self.needed / 2**20:,.0f} MiB, free {free / 2**20:,.1f} MiB); last complete checkpoint: "
            f"{self.previous or 'none'}") from err


def prune_checkpoints(run_dir: Path, keep: int, trusted_before: int | None = None) -> None:
    """Delete all but the newest `keep` checkpoints, never the newest one from before `trusted_before`: a
    checkpoint is only known healthy once a clean step has run on its weights, and rotation must not
    leave nothing healthy to go back to."""
    found = list_checkpoints(run_dir)
    trusted = [c for c in found if trusted_before is None or checkpoint_step(c) < trusted_before]
    protected = {trusted[-1]} if trusted else set()
    for old in found[:-keep]:
        if old not in protected:
            shutil.rmtree(old)


def _start(dist: Dist, write_rank_files: Callable[[Path], None] | None, tmp: Path,
           background: bool) -> Future | None:
    """Every rank's files into `tmp`; the strategy's own may still be being written (the future)."""
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
        tmp.mkdir(parents=True)
    dist.barrier()
    write = dist.strategy.save(tmp, background=background)
    if write_rank_files:
        write_rank_files(tmp)
    return write


def _publish(dist: Dist, run_dir: Path, state: dict, cfg: BonsaiConfig, final: Path, tmp: Path, keep: int,
             trusted_before: int | None) -> Path:
    """Once every rank's files are in `tmp`: the trainer state, the config and the manifest, then the
    rename that makes the checkpoint visible, then the rotation."""
    dist.barrier()
    if dist.is_main:
        write_json(tmp / STATE_FILE, state)
        save_resolved(cfg, tmp / "config.yaml")
        write_manifest(tmp, MANIFEST, step=state["step"])  # last: it says the rest is whole
        if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        prune_checkpoints(run_dir, keep, trusted_before)
    dist.barrier()
    return final


def read_trainer_state(path: Path) -> TrainerState:
    return TrainerState(**json.loads((path / STATE_FILE).read_text(encoding="utf-8")))


def load_checkpoint(dist: Dist, path: Path) -> TrainerState:
    """The strategy's state and the trainer's; whether this layout can load it was checked at start-up
    (bonsai.train.resume.resize)."""
    state = read_trainer_state(path)
    dist.strategy.load(path)
    return state
