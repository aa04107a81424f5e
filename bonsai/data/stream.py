"""Streaming records from JSONL/Parquet shards, split across ranks, resumable at any record.

Why not `datasets.load_dataset(..., streaming=True)`: its JSON builder parses in Arrow blocks and loses
line numbers, and Bonsai must name the file and line of every bad record. Reading is done here with
fsspec (so `s3://`, `gs://`, `file://` and plain paths all work); each epoch is a deterministic function
of (seed, epoch), so a position is just (epoch, how many of this rank's items it has taken), plus where
its shuffle window starts in the shards (`Seek`), so that a resume opens the data there.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import fsspec

from bonsai.data.elastic import FULL_EPOCH, EpochLayout
from bonsai.data.line_index import LineIndex, RecordReader, index_lines, is_indexable
from bonsai.data.records import BadRecord, Where, parse_json_line

SHARD_SUFFIXES = (".jsonl", ".json", ".parquet")
DEFAULT_MAX_RECORD_BYTES = 1 << 20  # data.max_record_bytes: a 2048-token record is ~10 KB of text
MANIFEST_NAME = "manifest.json"  # written by `bonsai data shard`; describes the shards, is not one


class DataSourceError(ValueError):
    """The data path itself is wrong (nothing there, unknown format)."""


@dataclass(frozen=True)
class Seek:
    """Where one shuffle window of an epoch starts in the epoch's shard order: a resume reads from there
    instead of from the epoch's first byte, so its cost does not grow with the position."""

    window: int  # the window's index in the epoch
    order: int  # the place, in the epoch's shard order, of the shard it starts in
    shard: str  # that shard's URL: a hint for another list of shards is not used
    offset: int  # the byte offset (JSONL) or row index (Parquet) of the window's first item in that shard
    line: int  # and its 1-based line (row) number

    def to_dict(self) -> dict:
        return {"window": self.window, "order": self.order, "shard": self.shard, "offset": self.offset,
                "line": self.line}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> Seek | None:
        if not d:
            return None
        return cls(int(d["window"]), int(d["order"]), str(d["shard"]), int(d["offset"]), int(d["line"]))


@dataclass(frozen=True, order=True)
class StreamPosition:
    """Where one rank stands: `taken` of its items of `epoch` are behind it. `packed_rows`: rows already
    trained of the packing window that starts here (see packing.pack_best_fit); the stream ignores it.
    `seek`: where the shuffle window of the item at this position starts (or one before it), so resuming
    reads from there; it changes nothing about which items come, and positions compare without it."""

    epoch: int = 0
    taken: int = 0
    packed_rows: int = 0
    window_done: tuple[tuple[int, int], ...] = ()
    """(epoch, taken) of the documents in those rows: what a resume on another world size must not repeat."""
    seek: Seek | None = field(default=None, compare=False)

    def next(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.taken + 1, seek=self.seek)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken, "packed_rows": self.packed_rows,
                "window_done": [list(d) for d in self.window_done],
                "seek": self.seek.to_dict() if self.seek else None}

    @classmethod
    def from_dict(cls, d: dict) -> StreamPosition:
        return cls(epoch=int(d["epoch"]), taken=int(d["taken"]), packed_rows=int(d.get("packed_rows", 0)),
                   window_done=tuple((int(e), int(k)) for e, k in d.get("window_done", ())),
                   seek=Seek.from_dict(d.get("seek")))


def list_shards(path: str) -> list[str]:
    """A file, a directory (searched recursively) or a glob; returns sorted fsspec URLs."""
    fs, root = fsspec.core.url_to_fs(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def url(p: str) -> str:
        return p if protocol in ("file", "local") else f"{protocol}://{p}"

    if _glob.has_magic(root):
        found = [p for p in fs.glob(root) if fs.isfile(p)]
    elif fs.isdir(root):
        found = [p for p in fs.find(root) if p.endswith(SHARD_SUFFIXES) and p.rsplit("/", 1)[-1] != MANIFEST_NAME]
    elif fs.isfile(root):
        found = [root]
    else:
        raise DataSourceError(f"data.path {path!r}: no such file or directory")
    shards = sorted(url(p) for p in found)
    unknown = [s for s in shards if not s.endswith(SHARD_SUFFIXES)]
    if unknown:
        raise DataSourceError(f"data.path {path!r}: {unknown[0]} is not a {'/'.join(SHARD_SUFFIXES)} file")
    if not shards:
        raise DataSourceError(f"data.path {path!r}: no {'/'.join(SHARD_SUFFIXES)} shards found")
    return shards


@dataclass(frozen=True)
class RawLine:
    """A JSONL line as bytes, with the file offset where it starts: decoded and parsed by the rank that
    owns it, so a bad byte or an oversized line is reported with its place, not met as a crash."""

    data: bytes
    offset: int


def read_shard(url: str, offset: int = 0, line: int = 1) -> Iterator[tuple[Where, RawLine | dict]]:
    """Yields (where, payload): the raw line for JSONL, a row dict for Parquet. Blank lines are not
    records and are passed over. `offset` and `line`: start at that byte offset (JSONL; a line start)
    or row index (Parquet, whose row groups before it are not read), numbered from `line`."""
    if url.endswith(".parquet"):
        yield from read_parquet(url, offset)
        return
    with fsspec.open(url, "rb") as f:
        if offset:
            f.seek(offset)
        for line_no, data, start in jsonl_lines(f, offset, line):
            if data.strip():
                yield Where(url, line_no), RawLine(data, start)


def jsonl_lines(f, offset: int, line: int, end: int | None = None) -> Iterator[tuple[int, bytes, int]]:
    """(line number, bytes, offset) of every line of `f` (positioned at `offset`, a line start), blank
    ones too, up to the first line that starts at or after `end`."""
    for line_no, data in enumerate(f, start=line):
        if end is not None and offset >= end:
            return
        yield line_no, data, offset
        offset += len(data)


def read_parquet(url: str, first_row: int, end_row: int | None = None) -> Iterator[tuple[Where, dict]]:
    """Rows [first_row, end_row) as dicts, numbered from 1; the row groups outside them are not read."""
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        parquet = pq.ParquetFile(f)
        end_row = parquet.metadata.num_rows if end_row is None else end_row
        groups, row, group_start = [], 0, 0
        for g in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(g).num_rows
            if group_start + size > first_row and group_start < end_row:
                groups.append(g)
            elif not groups:
                row += size  # a whole group before the start: not read
            group_start += size
        for batch in parquet.iter_batches(batch_size=1024, row_groups=groups):
            for obj in batch.to_pylist():
                row += 1
                if row > end_row:
                    return
                if row > first_row:
                    yield Where(url, row), obj


def index_shard(url: str) -> LineIndex | None:
    """`url`'s LineIndex, read from its bytes (the scan builds it as it goes); None for Parquet."""
    if not is_indexable(url):
        return None
    return index_lines((raw.offset, raw.offset + len(raw.data), where.line) for where, raw in read_shard(url))


def item_offset(where: Where, payload: RawLine | dict) -> int:
    """Where an item starts in its shard, as read_shard's `offset` takes it."""
    return payload.offset if isinstance(payload, RawLine) else where.line - 1


def parse_payload(payload: RawLine | str | dict, where: Where, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> dict:
    """The record's fields. A line over `max_bytes` is refused before it is decoded or parsed (a 50 MB
    line would otherwise take minutes to tokenize); a line that is not UTF-8 names the byte."""
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, RawLine):
        if len(payload.data) > max_bytes:
            raise BadRecord(where, "(line)", f"{len(payload.data):,} bytes, over data.max_record_bytes {max_bytes:,}",
                            payload.data[:200].decode("utf-8", "replace"))
        try:
            payload = payload.data.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = payload.data[err.start : err.start + 1].hex()
            raise BadRecord(where, "(line)", f"not UTF-8: byte 0x{bad} at file offset {payload.offset + err.start} "
                                             f"(column {err.start + 1}); re-encode the file as UTF-8",
                            payload.data[:200].decode("utf-8", "replace")) from None
    return parse_json_line(payload, where)


def shard_order(shards: list[str], seed: int, epoch: int) -> list[str]:
    """The order an epoch reads its shards in: the same on every rank and every launch."""
    order = list(shards)
    random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def epoch_items(shards: list[str], epoch: int, seed: int, window: int,
                seek: Seek | None = None) -> Iterator[tuple[Where, str | dict, Seek]]:
    """All items of one epoch in this epoch's order: shards shuffled, then items shuffled within
    consecutive windows. Every rank computes the same order. Each item comes with where its window
    starts; from `seek` (such a start), the items of the windows before it are not read."""
    order = shard_order(shards, seed, epoch)
    first, window_index = 0, 0
    if seek is not None:
        first, window_index = seek.order, seek.window
    buffer: list = []
    start: Seek | None = None
    for k in range(first, len(order)):
        resume = seek is not None and k == seek.order
        for where, payload in read_shard(order[k], *((seek.offset, seek.line) if resume else ())):
            if not buffer:
                start = Seek(window_index, k, order[k], item_offset(where, payload), where.line)
            buffer.append((where, payload))
            if len(buffer) == window:
                random.Random(f"window:{seed}:{epoch}:{window_index}").shuffle(buffer)
                yield from ((w, p, start) for w, p in buffer)
                buffer, window_index = [], window_index + 1
    random.Random(f"window:{seed}:{epoch}:{window_index}").shuffle(buffer)
    yield from ((w, p, start) for w, p in buffer)


def usable_seek(start: StreamPosition, shards: list[str], seed: int) -> Seek | None:
    """`start.seek` if it describes this epoch's shard order (the data may have changed since)."""
    seek = start.seek
    if seek is None:
        return None
    order = shard_order(shards, seed, start.epoch)
    return seek if seek.order < len(order) and order[seek.order] == seek.shard else None


def indexed_epoch_items(shards: list[str], epoch: int, seed: int, window: int, indexes: Mapping[str, LineIndex],
                        seek: Seek | None = None) -> Iterator[tuple[tuple[str, int], Seek]]:
    """epoch_items' order, from the shards' line indexes instead of their bytes: (shard, record number)
    for each item, with the same window starts. Nothing is read; reading is for the items a rank keeps."""
    order = shard_order(shards, seed, epoch)
    window_index = seek.window if seek else 0
    k, j = 0, window_index * window  # the first item to give, as (place in order, record in that shard)
    while k < len(order) and j >= len(indexes[order[k]]):
        j -= len(indexes[order[k]])
        k += 1
    buffer: list[tuple[str, int]] = []
    start: Seek | None = None
    for k in range(k, len(order)):
        index = indexes[order[k]]
        for j in range(j, len(index)):
            if not buffer:
                start = Seek(window_index, k, order[k], index.starts[j], index.lines[j])
            buffer.append((order[k], j))
            if len(buffer) == window:
                random.Random(f"window:{seed}:{epoch}:{window_index}").shuffle(buffer)  # as epoch_items does
                yield from ((ref, start) for ref in buffer)
                buffer, window_index = [], window_index + 1
        j = 0
    random.Random(f"window:{seed}:{epoch}:{window_index}").shuffle(buffer)
    yield from ((ref, start) for ref in buffer)


def rank_items(
    shards: list[str], *, seed: int, window: int, rank: int, world_size: int, start: StreamPosition, epochs: int | None,
    layouts: Mapping[int, EpochLayout] | None = None, indexes: Mapping[str, LineIndex] | None = None,
) -> Iterator[tuple[StreamPosition, Where, RawLine | dict]]:
    """This rank's items, from `start`, for `epochs` epochs (None: forever): of each epoch's items that
    its layout leaves (all of them, unless a resume on another world size merged the ranks' positions;
    see bonsai.data.elastic), every world_size-th. Ranks never share an item, and together they cover
    what remains. `start.seek` lets the first epoch begin at the window of `start` (same items).
    `indexes` (every shard's LineIndex): the same items, but a rank reads only its own records."""
    epoch = start.epoch
    skip = start.taken
    layouts = layouts or {}
    seek = usable_seek(start, shards, seed)
    indexed = indexes and world_size > 1 and all(indexes.get(s) is not None for s in shards)
    reader = RecordReader(dict(indexes)) if indexed else None
    try:
        while epochs is None or epoch < start.epoch + epochs:
            layout = layouts.get(epoch, FULL_EPOCH)
            partial = layout != FULL_EPOCH
            first = seek.window * window if seek else 0  # the global index reading starts at
            dealt = layout.remaining_before(first)
            taken = max(0, -(-(dealt - rank) // world_size))  # this rank's items among those `dealt`
            seen = first
            items = (indexed_epoch_items(shards, epoch, seed, window, reader.indexes, seek) if reader
                     else (((w, p), at) for w, p, at in epoch_items(shards, epoch, seed, window, seek)))
            for i, (ref, at) in enumerate(items, start=first):
                seen = i + 1
                if partial and not layout.is_remaining(i):
                    continue
                dealt += 1
                if (dealt - 1) % world_size != rank:
                    continue
                if taken >= skip:
                    yield (StreamPosition(epoch, taken, seek=at), *(_read(reader, ref) if reader else ref))
                taken += 1
            if taken == 0 and not partial:
                raise no_records_error(shards, seen, rank, world_size)
            epoch, skip, seek = epoch + 1, 0, None
    finally:
        if reader:
            reader.close()


def _read(reader: RecordReader, ref: tuple[str, int]) -> tuple[Where, RawLine]:
    where, data, offset = reader.read(*ref)
    return where, RawLine(data, offset)


def no_records_error(shards: list[str], seen: int, rank: int, world_size: int) -> DataSourceError:
    if seen == 0:
        names = shards[0] if len(shards) == 1 else f"{shards[0]} and the {len(shards) - 1} other shard(s)"
        return DataSourceError(f"{names}: empty, no records (blank lines are not records)")
    return DataSourceError(f"rank {rank} of {world_size} got no records: the data has {seen} record(s), "
                           f"fewer than the {world_size} ranks")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ManifestMismatch(DataSourceError):
    pass


def verify_manifest(root: str, shards: list[str]) -> None:
    """If `root` (a data directory) has a manifest, every shard must be listed in it with its hash, and
    every listed shard must be there: a half-copied or edited shard is refused before training."""
    fs, path = fsspec.core.url_to_fs(root)
    manifest_path = f"{path.rstrip('/')}/{MANIFEST_NAME}"
    if not fs.isfile(manifest_path):
        return
    listed = {e["file"]: e for e in json.loads(fs.cat(manifest_path))["shards"]}
    found = {os.path.basename(s): s for s in shards}
    for name in sorted(set(listed) - set(found)):
        raise ManifestMismatch(f"{root}: {name} is in {MANIFEST_NAME} but missing")
    for name, url in sorted(found.items()):
        if name not in listed:
            raise ManifestMismatch(f"{root}: {name} is not in {MANIFEST_NAME}; re-run `bonsai data shard` or remove it")
        if sha256_of(url) != listed[name]["sha256"]:
            raise ManifestMismatch(f"{url}: sha256 differs from {MANIFEST_NAME} (changed or partly copied); "
                                   f"copy it again or re-run `bonsai data shard`")
