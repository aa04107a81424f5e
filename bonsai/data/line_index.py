"""Where each record of a JSONL shard starts and ends, and its line number: with it a rank reads only the
records dealt to it (bytes per rank ~ data / ranks) instead of every line of every shard.

Built as a by-product of the start-up scan (which reads each shard once) and kept in the scan cache,
keyed by the shard's content identity, not by the world size: a relaunch on any number of processes
finds it. 24 bytes per record (1M records: 24 MB per rank).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from bonsai.data.records import Where


@dataclass
class LineIndex:
    """One JSONL shard's records (non-blank lines) in file order: byte range [starts[j], ends[j]) and
    1-based line number lines[j] of the j-th."""

    starts: array = field(default_factory=lambda: array("q"))
    ends: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, end: int, line: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.lines.append(line)

    def save(self, path: Path) -> None:
        """Atomically: ranks that scanned the same shard may write the same index at once."""
        tmp = path.with_name(f"{path.name}.{id(self)}.tmp")
        with tmp.open("wb") as f:
            array("q", [len(self)]).tofile(f)
            for column in (self.starts, self.ends, self.lines):
                column.tofile(f)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LineIndex | None:
        """None when missing or torn (a crash mid-write): the shard is indexed again."""
        try:
            with path.open("rb") as f:
                count = array("q")
                count.fromfile(f, 1)
                columns = [array("q") for _ in range(3)]
                for column in columns:
                    column.fromfile(f, count[0])
                if f.read(1):
                    return None
        except (OSError, EOFError, ValueError):  # ValueError: cut inside a number
            return None
        return cls(*columns)


def is_indexable(url: str) -> bool:
    return not url.endswith(".parquet")  # Parquet is read by row group: a row cannot be read alone


class RecordReader:
    """Reads single records of indexed shards by their byte range, each with one read of exactly its
    bytes (no read-ahead of the records between, which belong to other ranks). A few shards stay open
    (a window spans at most a few): thousands of shards must not exhaust the process's file handles."""

    OPEN_SHARDS = 8

    def __init__(self, indexes: dict[str, LineIndex]):
        self.indexes = indexes
        self._files: OrderedDict[str, object] = OrderedDict()

    def read(self, url: str, j: int) -> tuple[Where, bytes, int]:
        index = self.indexes[url]
        f = self._files.get(url)
        if f is None:
            if len(self._files) >= self.OPEN_SHARDS:
                self._files.popitem(last=False)[1].close()
            f = self._files[url] = _open_unbuffered(url)
        self._files.move_to_end(url)
        start = index.starts[j]
        f.seek(start)
        data = f.read(index.ends[j] - start)
        return Where(url, index.lines[j]), data, start

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()


def _open_unbuffered(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return open(path, "rb", buffering=0)  # noqa: SIM115 - RecordReader closes it
    return fs.open(path, "rb", cache_type="none")  # object stores: one ranged request per record


def index_lines(lines: Iterator[tuple[int, int, int]]) -> LineIndex:
    """From (start, end, line) of each record."""
    index = LineIndex()
    for start, end, line in lines:
        index.add(start, end, line)
    return index


def join_pieces(pieces: list[LineIndex], bases: list[int]) -> LineIndex:
    """A shard's LineIndex from its pieces' (bonsai.data.shard_piece), in order, each piece's lines
    numbered within it and moved by its base."""
    whole = LineIndex()
    for piece, base in zip(pieces, bases, strict=True):
        whole.starts.extend(piece.starts)
        whole.ends.extend(piece.ends)
        whole.lines.extend(line + base for line in piece.lines)
    return whole
