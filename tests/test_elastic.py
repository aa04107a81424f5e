"""Resuming the data stream on another number of ranks: no item read twice, none skipped, per epoch.

The stream is driven the way the trainer drives it: each rank takes an uneven number of items (packing
advances ranks unevenly), some ranks stop in the middle of a packing window with only some of its
documents trained, some cross into the next epoch; then the positions are merged and dealt to a new
world size, again and again. Whatever the sequence, every epoch's items are consumed exactly once.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from bonsai.data.elastic import EpochLayout, layouts_from_dict, layouts_to_dict, relayout, windows_done_after
from bonsai.data.stream import StreamPosition, rank_items

ITEMS = 53


@pytest.fixture
def shards(tmp_path):
    paths = []
    for s in range(3):
        path = tmp_path / f"part-{s}.jsonl"
        path.write_text("".join(json.dumps({"id": f"r{i}"}) + "\n" for i in range(s, ITEMS, 3)))
        paths.append(str(path))
    return paths


def _stretch(shards, world, layouts, start, rng, consumed):
    """Every rank of `world` takes some items from `start`, then part of a packing window; returns the
    positions a checkpoint would save."""
    positions = []
    for rank in range(world):
        items = rank_items(shards, seed=5, window=4, rank=rank, world_size=world, start=start, epochs=None,
                           layouts=layouts)
        position = start
        for _ in range(rng.randrange(0, 30)):
            at, _, payload = next(items)
            consumed[at.epoch].append(json.loads(payload.data)["id"])
            position = at.next()
        window = [next(items) for _ in range(rng.randrange(0, 6))]
        trained = [(at, payload) for at, _, payload in window if rng.random() < 0.5]
        if trained:  # stopped inside the window: its start is the position, its trained documents listed
            for at, payload in trained:
                consumed[at.epoch].append(json.loads(payload.data)["id"])
            first = window[0][0]
            position = StreamPosition(first.epoch, first.taken, 1, tuple((at.epoch, at.taken) for at, _ in trained))
        positions.append(position)
    return positions


def _finish(shards, world, layouts, start, last_epoch, consumed):
    for rank in range(world):
        for at, _, payload in rank_items(shards, seed=5, window=4, rank=rank, world_size=world, start=start,
                                         epochs=last_epoch - start.epoch + 1, layouts=layouts):
            consumed[at.epoch].append(json.loads(payload.data)["id"])


@pytest.mark.parametrize("worlds", [(2, 1), (1, 2), (2, 3), (3, 2, 1), (4, 1, 3, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_every_item_once_per_epoch_across_world_size_changes(shards, worlds, seed):
    rng = random.Random(f"{worlds}:{seed}")
    consumed: dict[int, list[str]] = {e: [] for e in range(50)}
    layouts: dict[int, EpochLayout] = {}
    start = StreamPosition()
    for world, next_world in zip(worlds, worlds[1:]):
        positions = _stretch(shards, world, layouts, start, rng, consumed)
        epoch, layouts = relayout(layouts, positions, ITEMS)
        layouts = layouts_from_dict(json.loads(json.dumps(layouts_to_dict(layouts))))  # as a checkpoint keeps it
        start = StreamPosition(epoch)
    last = max(e for e, ids in consumed.items() if ids)
    _finish(shards, worlds[-1], layouts, start, max(last, start.epoch), consumed)
    everything = Counter(f"r{i}" for i in range(ITEMS))
    for epoch in range(max(last, start.epoch) + 1):
        assert Counter(consumed[epoch]) == everything, f"epoch {epoch}"


def test_a_fully_consumed_epoch_moves_the_start_on(shards):
    done = [StreamPosition(1, 0)] * 2  # both ranks finished epoch 0
    epoch, layouts = relayout({}, done, ITEMS)
    assert (epoch, layouts) == (1, {})


def test_the_ragged_edge_is_all_that_is_listed(shards):
    # rank 0 took 10 items (global 0, 2, ..., 18), rank 1 took 7 (1, 3, ..., 13): 0-14, 16 and 18 are done
    epoch, layouts = relayout({}, [StreamPosition(0, 10), StreamPosition(0, 7)], ITEMS)
    assert epoch == 0 and layouts[0] == EpochLayout(frontier=15, done=(16, 18))


def test_window_done_follows_the_window():
    start = StreamPosition(0, 4)
    first = windows_done_after(start, StreamPosition(0, 4, 1), [StreamPosition(0, 6)])
    assert first == ((0, 6),)
    second = windows_done_after(StreamPosition(0, 4, 1, first), StreamPosition(0, 4, 2), [StreamPosition(0, 4)])
    assert second == ((0, 6), (0, 4))
    assert windows_done_after(StreamPosition(0, 4, 2, second), StreamPosition(0, 9), [StreamPosition(0, 8)]) == ()
    other = windows_done_after(StreamPosition(0, 4, 2, second), StreamPosition(0, 9, 1), [StreamPosition(0, 9)])
    assert other == ((0, 9),)
