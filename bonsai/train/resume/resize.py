"""Resuming a checkpoint on another number of processes: decided before any heavy work.

What is kept: the global batch (rows per optimizer step over all ranks; the accumulation is recomputed),
the step count and LR schedule (Accelerate's scheduler state), and the data: every rank's position is
merged into a layout of what remains of the epoch (bonsai.data.elastic), so no record is trained twice
and none is skipped. Model and optimizer state load as they are under DDP (they are whole on every
rank); ZeRO partitions for another number of ranks, and a checkpoint from another strategy, are
resharded (bonsai.train.resume.reshard).
"""

from __future__ import annotations

from pathlib import Path

from bonsai.config import BonsaiConfig
from bonsai.data.elastic import (
    describe_relayout,
    layouts_from_dict,
    layouts_to_dict,
    relayout,
)
from bonsai.data.stream import StreamPosition
from bonsai.errors import CheckpointMismatch
from bonsai.train.resume.checkpoint import TrainerState


def resume_accumulation(saved: TrainerState, checkpoint: Path, cfg: BonsaiConfig, world_size: int,
                        accumulation: int) -> tuple[int, str | None]:
    """This run's accumulation when it resumes `checkpoint`, and a line to say when it differs from the
    config's: the one that keeps the checkpoint's global batch. Raises CheckpointMismatch, naming the
    options, for a layout that cannot resume it."""
    if saved.saved_layout() is None and saved.world_size != world_size:
        raise CheckpointMismatch(
            f"{checkpoint} holds data positions for {saved.world_size} process(es), written before Bonsai could "
            f"resize, this run has {world_size}. Relaunch with {saved.world_size} processes, or start a new output_dir")
    if not saved.global_batch:
        return accumulation, None  # an older checkpoint, same world size: the config decides, as before
    micro = cfg.train.micro_batch_size
    if saved.global_batch % (micro * world_size):
        raise CheckpointMismatch(
            f"{checkpoint} trained with a global batch of {saved.global_batch} rows per step; {world_size} "
            f"process(es) x train.micro_batch_size {micro} cannot keep it. "
            f"{_options(saved.global_batch, micro, world_size)}")
    kept = saved.global_batch // (micro * world_size)
    if kept == accumulation and saved.world_size == world_size:
        return accumulation, None
    return kept, (f"resuming a {saved.world_size}-process checkpoint on {world_size}: global batch "
                  f"{saved.global_batch} kept ({world_size} x micro-batch {micro} x accumulation {kept})")


def _options(global_batch: int, micro: int, world_size: int) -> str:
    counts = [n for n in range(1, global_batch + 1) if global_batch % (micro * n) == 0]
    micros = [m for m in range(1, global_batch + 1) if global_batch % (m * world_size) == 0]
    hint = f"Launch {', '.join(map(str, counts))} process(es)" if counts else "No process count works"
    if micros:
        hint += f", or set train.micro_batch_size to one of {', '.join(map(str, micros))} for {world_size}"
    return hint


def merge_positions(state: TrainerState, world_size: int, items_per_epoch: int) -> tuple[TrainerState, str]:
    """`state` with the old ranks' data positions merged into layouts and dealt to `world_size` ranks."""
    positions = [StreamPosition.from_dict(p) for p in state.data_positions]
    start, layouts = relayout(layouts_from_dict(state.data_layouts), positions, items_per_epoch)
    said = describe_relayout(state.world_size, world_size, start, layouts, items_per_epoch)
    state.data_layouts = layouts_to_dict(layouts)
    state.data_positions = [StreamPosition(start).to_dict()] * world_size
    state.world_size = world_size
    return state, said


def prune_layouts(layouts: dict[str, dict], positions: list[dict]) -> dict[str, dict]:
    """Layouts of epochs every rank has left are not needed any more."""
    first = min(int(p["epoch"]) for p in positions)
    return {epoch: layout for epoch, layout in layouts.items() if int(epoch) >= first}
