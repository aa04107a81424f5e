"""What a resume costs in the data stream before its first item, by how far into the epoch it resumes:
reading from the epoch's start and skipping (a position without a seek hint, as before) against
seeking to the shuffle window of the position (shard, byte offset, line).

    .venv/bin/python bench/resume_seek.py            # --records 1000000 --ranks 1 2 4

Generated data (the shipped sample repeated with new ids, bench/data_pipeline.py): 8 shards, and the
same records in one big file. For each layout and rank count, rank 0's stream is walked once to take
its positions at 0 %, 50 % and 90 % of the epoch, then restarted from each position; the figure is the
seconds from the restart to its first item (best of 3). data.shuffle_window is Bonsai's default (1024).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from data_pipeline import write_dataset

from bonsai.config import DataConfig
from bonsai.data.stream import StreamPosition, list_shards, rank_items

WINDOW = DataConfig(path=".").shuffle_window
FRACTIONS = (0.0, 0.5, 0.9)


def stream(shards: list[str], start: StreamPosition, rank: int, ranks: int):
    return rank_items(shards, seed=1, window=WINDOW, rank=rank, world_size=ranks, start=start, epochs=1)


def positions_at(shards: list[str], ranks: int) -> list[StreamPosition]:
    taken = [p for p, _, _ in stream(shards, StreamPosition(), 0, ranks)]
    return [taken[min(len(taken) - 1, int(f * len(taken)))] for f in FRACTIONS]


def first_item_s(shards: list[str], start: StreamPosition, ranks: int) -> float:
    best = float("inf")
    for _ in range(3):
        begun = time.perf_counter()
        next(iter(stream(shards, start, 0, ranks)))
        best = min(best, time.perf_counter() - begun)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bonsai-seek-"))
    layouts = {"8 shards": write_dataset(work / "sharded", args.records, 8),
               "1 file": write_dataset(work / "one", args.records, 1)}
    print(f"{args.records:,} records; seconds from a resume to its first item (rank 0), read-and-skip / seek")
    print(f"{'data':<10}{'ranks':>6}" + "".join(f"{f'at {f:.0%}':>22}" for f in FRACTIONS))
    for name, directory in layouts.items():
        shards = list_shards(str(directory))
        for ranks in args.ranks:
            cells = []
            for position in positions_at(shards, ranks):
                before = first_item_s(shards, replace(position, seek=None), ranks)
                after = first_item_s(shards, position, ranks)
                cells.append(f"{before:>9.3f} / {after:<9.3f}")
            print(f"{name:<10}{ranks:>6}" + "".join(f"{c:>22}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
