"""Resuming a checkpoint written under another strategy (DDP, DeepSpeed ZeRO-1/2/3 with or without
optimizer offload, FSDP2), or as ZeRO partitions for another number of processes: the checkpoint's
trainable tensors and their AdamW moments are read whole, one tensor at a time, by the strategy that wrote
them (`Strategy.read_whole`: DDP's files are whole already; ZeRO's per-rank flat partitions go through
DeepSpeed's universal-checkpoint conversion on rank 0; FSDP2's distributed checkpoint through DCP's own
conversion), into a scratch directory of the run, and put into this run's model and optimizer the way its
strategy holds them (`Strategy.write_whole`). The scheduler comes from the checkpoint too. Per-rank RNG
states are not carried over (they belong to ranks that may not exist any more); nothing in Bonsai's data
order depends on them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from bonsai.errors import CheckpointMismatch
from bonsai.train.resume.checkpoint import TrainerState
from bonsai.train.distributed import Dist
from bonsai.train.optimizer import decay_groups
from bonsai.train.strategies.base import Layout
from bonsai.train.strategies.select import strategy_class

SCRATCH_PREFIX = ".reshard-"
SCHEDULER = "scheduler.bin"  # every strategy writes the scheduler's state under this name


def needs_reshard(saved: TrainerState, world_size: int, layout: Layout) -> bool:
    """Whether `saved` cannot be loaded as it is by a run of `layout` on `world_size` processes."""
    written = saved.saved_layout()
    if written is None:
        return False  # written before Bonsai recorded its strategy: refused by resize.resume_accumulation
    return not written.loads_as_is(layout, saved.world_size == world_size)


def load_resharded(dist: Dist, checkpoint: Path, saved: TrainerState, model, optimizer, scheduler,
                   scratch: Path) -> tuple[TrainerState, str]:
    """Load `checkpoint` (its trainer state: `saved`), written under another layout, into this run's
    prepared model, optimizer and scheduler. Returns `saved` and a line that says what was done."""
    strategy = dist.strategy
    order = [name for group in decay_groups(strategy.unwrap(model)) for name, _ in group]
    written = saved.saved_layout()
    try:
        whole = strategy_class(written.kind).read_whole(dist, checkpoint, order, scratch)
        missing = [name for name in order if name not in whole.names]
        if missing:
            raise CheckpointMismatch(f"{checkpoint} has no tensor {missing[0]} ({len(missing)} of this model's "
                                     f"{len(order)} trainable tensors missing): written for another model")
        strategy.write_whole(dist, model, optimizer, whole, order)
        scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER, map_location="cpu", weights_only=True))
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr  # a loaded schedule sets the rate only at its next step
    finally:
        dist.barrier()
        if dist.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
    said = (f"resharded {checkpoint.name}: {len(order)} tensors with their AdamW state (step {whole.step}) from "
            f"{written.describe()} on {saved.world_size} process(es) to {strategy.describe(dist.world_size)}")
    return saved, said
