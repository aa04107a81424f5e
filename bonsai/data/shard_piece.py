"""One rank's piece of a shard, for the start-up scan when there are fewer shards than ranks (one big
file on 4 processes): each rank reads 1/world_size of every shard instead of all of it.

JSONL is split by byte range, a line belonging to the piece its first byte is in; Parquet by rows, the
row groups outside a piece's rows not read. A JSONL piece cannot know how many lines come before it
without reading them, so its lines are numbered from 1 within the piece; with every piece's count of
lines (`PieceReader.lines`, blank lines too), gathered from the ranks, `line_bases` says what to add.
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec

from bonsai.data.records import Where
from bonsai.data.stream import RawLine, jsonl_lines, read_parquet


class PieceReader:
    """Reads piece `rank` of `world_size` of one shard: (where, payload) as read_shard yields them, a
    JSONL piece's lines numbered within the piece. `lines`: how many lines started in it, once read."""

    def __init__(self, url: str, rank: int, world_size: int):
        self.url, self.rank, self.world_size = url, rank, world_size
        self.lines = 0

    def __iter__(self) -> Iterator[tuple[Where, RawLine | dict]]:
        if self.url.endswith(".parquet"):
            yield from self._parquet_rows()
            return
        fs, path = fsspec.core.url_to_fs(self.url)
        size = fs.size(path)
        lo, hi = size * self.rank // self.world_size, size * (self.rank + 1) // self.world_size
        self.lines = 0
        with fs.open(path, "rb") as f:
            start = _first_line_start(f, lo)
            for line_no, data, offset in jsonl_lines(f, start, 1, end=hi):
                self.lines = line_no
                if data.strip():
                    yield Where(self.url, line_no), RawLine(data, offset)

    def _parquet_rows(self) -> Iterator[tuple[Where, dict]]:
        import pyarrow.parquet as pq

        with fsspec.open(self.url, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        yield from read_parquet(self.url, rows * self.rank // self.world_size,
                                rows * (self.rank + 1) // self.world_size)


def _first_line_start(f, lo: int) -> int:
    """The offset of the first line that starts at or after `lo`, `f` positioned there: the rest of the
    line holding byte lo - 1 belongs to the piece before."""
    if lo == 0:
        return 0
    f.seek(lo - 1)
    return lo - 1 + len(f.readline())


def line_bases(piece_lines: list[dict[str, int]]) -> list[dict[str, int]]:
    """For each rank, per shard, the lines of the pieces of the ranks before it: added to the numbers of
    its piece's lines, they give the lines' numbers in the shard. `piece_lines`: each rank's counts."""
    bases, before = [], {}
    for counts in piece_lines:
        bases.append(dict(before))
        for url, lines in counts.items():
            before[url] = before.get(url, 0) + lines
    return bases
