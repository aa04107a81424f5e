"""A resume knows the data it resumes: each checkpoint records every shard's identity
(bonsai.data.identity), and a resume that finds the data changed refuses, or, when the user asked for it
(`data.on_change: new_epoch`), starts a new epoch over the changed data instead of reusing byte offsets
that now point at other records."""

from __future__ import annotations

from dataclasses import replace

from bonsai.config import BonsaiConfig
from bonsai.data.identity import data_changes
from bonsai.data.stream import StreamPosition, list_shards
from bonsai.errors import DataError
from bonsai.train.resume.checkpoint import TrainerState


def changes_since(saved: TrainerState, checkpoint_name: str, cfg: BonsaiConfig) -> list[str]:
    """The shards changed since the checkpoint was written: [] when none did (or the checkpoint predates
    the record). Raises DataError, naming them, unless data.on_change allows going on."""
    if not saved.data_shards:
        return []
    changes = data_changes(saved.data_shards, list_shards(cfg.data.path))
    if changes and cfg.data.on_change == "error":
        raise DataError(
            f"data.path {cfg.data.path} changed since checkpoint {checkpoint_name}: {'; '.join(changes[:5])}"
            f"{f' (and {len(changes) - 5} more)' if len(changes) > 5 else ''}. The checkpoint's positions are byte "
            f"offsets into the old files: resuming would train records twice or never. Restore the data, or set "
            f"data.on_change=new_epoch to start a new epoch over the changed data, or train into a new "
            f"train.output_dir")
    return changes


def start_new_epoch(state: TrainerState, changes: list[str]) -> tuple[TrainerState, str]:
    """`state` with every rank at the start of the epoch after the furthest one any rank was in."""
    epochs = [StreamPosition.from_dict(p).epoch for p in state.data_positions]
    new = StreamPosition(epoch=max(epochs) + 1).to_dict()
    said = (f"data changed since the checkpoint ({'; '.join(changes[:3])}{' ...' if len(changes) > 3 else ''}); "
            f"data.on_change=new_epoch: epoch {max(epochs)} ends here, untrained records of it are not trained in "
            f"it, and epoch {max(epochs) + 1} starts from its beginning over the changed data")
    return replace(state, data_positions=[new] * len(state.data_positions), data_layouts={}), said
