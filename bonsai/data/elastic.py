"""Resuming the data stream on another number of ranks, with no record trained twice and none skipped.

Each epoch has one global order of items (stream.epoch_items). Its *layout* says which of them are still
to be read: every item from `frontier` on, except those listed in `done`. The items that remain are
dealt to the ranks in turn (the j-th remaining one to rank j % world_size), so a rank's position, "k of
my items taken", names global items only together with the layout and the world size.

When the world size changes, every old rank's position is turned back into the set of global items it
consumed: its first `taken` items, plus the documents already trained of a packing window it was in the
middle of (`StreamPosition.window_done`). Their union becomes the new layout; every new rank starts at
the beginning of its share of what remains. Ranks that packing had moved on unevenly, even into the next
epoch, are handled the same way: each epoch they touched gets its own layout.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # stream.py reads the layouts defined here
    from bonsai.data.stream import StreamPosition


@dataclass(frozen=True)
class EpochLayout:
    """Items of one epoch still to be read: global indices >= frontier that are not in `done`."""

    frontier: int = 0
    done: tuple[int, ...] = ()  # sorted, each > frontier

    def remaining(self, items: int) -> int:
        return items - self.frontier - len(self.done)

    def is_remaining(self, index: int) -> bool:
        if index < self.frontier:
            return False
        at = bisect.bisect_left(self.done, index)
        return at == len(self.done) or self.done[at] != index

    def remaining_before(self, index: int) -> int:
        """How many of the items before global index `index` are still to be read."""
        if index <= self.frontier:
            return 0
        return index - self.frontier - bisect.bisect_left(self.done, index)

    def global_index(self, j: int) -> int:
        """The global index of the j-th remaining item."""
        index = self.frontier + j
        for d in self.done:  # `done` is short: the ragged edge of the old ranks, not the epoch
            if d > index:
                break
            index += 1
        return index

    def to_dict(self) -> dict:
        return {"frontier": self.frontier, "done": list(self.done)}

    @classmethod
    def from_dict(cls, d: Mapping) -> EpochLayout:
        return cls(int(d["frontier"]), tuple(int(i) for i in d.get("done", ())))


FULL_EPOCH = EpochLayout()


def layouts_from_dict(d: Mapping[str, Mapping] | None) -> dict[int, EpochLayout]:
    return {int(epoch): EpochLayout.from_dict(layout) for epoch, layout in (d or {}).items()}


def layouts_to_dict(layouts: Mapping[int, EpochLayout]) -> dict[str, dict]:
    return {str(epoch): layout.to_dict() for epoch, layout in sorted(layouts.items())}


def rank_share(remaining: int, rank: int, world_size: int) -> int:
    """How many of `remaining` items, dealt in turn, rank `rank` gets."""
    return max(0, (remaining - rank + world_size - 1) // world_size)


def consumed_in_epoch(epoch: int, layout: EpochLayout, items: int, positions: list[StreamPosition]) -> set[int]:
    """Global indices of `epoch` that the ranks at `positions` (one per old rank) have consumed, beyond
    the layout's own (everything before its frontier, and its `done`)."""
    world_size = len(positions)
    remaining = layout.remaining(items)
    local: set[int] = set()  # j: the j-th remaining item of the layout
    for rank, p in enumerate(positions):
        share = rank_share(remaining, rank, world_size)
        taken = share if p.epoch > epoch else p.taken if p.epoch == epoch else 0
        local.update(rank + k * world_size for k in range(min(taken, share)))
        local.update(rank + k * world_size for e, k in p.window_done if e == epoch)
    return {layout.global_index(j) for j in local}


def relayout(layouts: Mapping[int, EpochLayout], positions: list[StreamPosition], items: int
             ) -> tuple[int, dict[int, EpochLayout]]:
    """The epoch where new ranks start and the layouts from there on, after `positions` (the old ranks')
    under `layouts`. `items`: how many items an epoch has (every epoch has the same ones)."""
    first = min(p.epoch for p in positions)
    # Up to the furthest epoch anyone touched, now or before the last resize (its layout must survive).
    last = max([p.epoch for p in positions] + [e for p in positions for e, _ in p.window_done] + list(layouts))
    new: dict[int, EpochLayout] = {}
    start = last + 1
    for epoch in range(first, last + 1):
        layout = layouts.get(epoch, FULL_EPOCH)
        done = set(layout.done) | consumed_in_epoch(epoch, layout, items, positions)
        frontier = layout.frontier
        while frontier in done:
            frontier += 1
        if frontier < items:
            start = min(start, epoch)
        if (frontier, done) != (0, set()):  # a layout for every epoch touched (one read whole, too)
            new[epoch] = EpochLayout(frontier, tuple(sorted(d for d in done if d > frontier)))
    return start, {e: layout for e, layout in new.items() if e >= start}


def describe_relayout(old_world: int, new_world: int, start_epoch: int, layouts: Mapping[int, EpochLayout],
                      items: int) -> str:
    layout = layouts.get(start_epoch, FULL_EPOCH)
    return (f"data: {old_world} rank(s)' positions merged and dealt to {new_world}: epoch {start_epoch} resumes "
            f"with {layout.remaining(items):,} of its {items:,} items (each record once)")


def windows_done_after(position: StreamPosition, row_resume: StreamPosition,
                       row_documents: list[StreamPosition]) -> tuple[tuple[int, int], ...]:
    """The `window_done` of the position after a row: the documents trained so far of the packing window
    the row belongs to (empty when the row ends its window)."""
    if row_resume.packed_rows == 0:
        return ()
    same_window = position.packed_rows > 0 and (position.epoch, position.taken) == (row_resume.epoch, row_resume.taken)
    before = position.window_done if same_window else ()
    return before + tuple((d.epoch, d.taken) for d in row_documents)
