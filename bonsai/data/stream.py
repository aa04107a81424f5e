"""Streaming records from JSONL/Parquet shards, split across ranks, resumable at any record.

Why not `datasets.load_dataset(..., streaming=True)`: its JSON builder parses in Arrow blocks and loses
line numbers, and Bonsai must name the file and line of every bad record. Reading is done here with
fsspec (so `s3://`, `gs://`, `file://` and plain paths all work); each epoch is a deterministic function
of (seed, epoch), so a position is just (epoch, how many of this rank's items it has taken).
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from bonsai.data.records import Where, parse_json_line

SHARD_SUFFIXES = (".jsonl", ".json", ".parquet")
MANIFEST_NAME = "manifest.json"  # written by `bonsai data shard`; describes the shards, is not one


class DataSourceError(ValueError):
    """The data path itself is wrong (nothing there, unknown format)."""


@dataclass(frozen=True, order=True)
class StreamPosition:
    """Where one rank stands: `taken` of its items of `epoch` are behind it. `packed_rows`: rows already
    trained of the packing window that starts here (see packing.pack_best_fit); the stream ignores it."""

    epoch: int = 0
    taken: int = 0
    packed_rows: int = 0

    def next(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.taken + 1)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken, "packed_rows": self.packed_rows}

    @classmethod
    def from_dict(cls, d: dict) -> StreamPosition:
        return cls(epoch=int(d["epoch"]), taken=int(d["taken"]), packed_rows=int(d.get("packed_rows", 0)))


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


def read_shard(url: str) -> Iterator[tuple[Where, str | dict]]:
    """Yields (where, payload): the raw line for JSONL (parsed later, by the rank that owns it),
    a row dict for Parquet. Blank lines are not records and are passed over."""
    if url.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(url, "rb") as f:
            row = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for obj in batch.to_pylist():
                    row += 1
                    yield Where(url, row), obj
        return
    with fsspec.open(url, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield Where(url, line_no), line


def parse_payload(payload: str | dict, where: Where) -> dict:
    return payload if isinstance(payload, dict) else parse_json_line(payload, where)


def epoch_items(shards: list[str], epoch: int, seed: int, window: int) -> Iterator[tuple[Where, str | dict]]:
    """All items of one epoch in this epoch's order: shards shuffled, then items shuffled within
    consecutive windows. Every rank computes the same order."""
    order = list(shards)
    random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    buffer: list = []
    window_index = 0
    for shard in order:
        for item in read_shard(shard):
            buffer.append(item)
            if len(buffer) == window:
                random.Random(f"window:{seed}:{epoch}:{window_index}").shuffle(buffer)
                yield from buffer
                buffer, window_index = [], window_index + 1
    random.Random(f"window:{seed}:{epoch}:{window_index}").shuffle(buffer)
    yield from buffer


def rank_items(
    shards: list[str], *, seed: int, window: int, rank: int, world_size: int, start: StreamPosition, epochs: int | None
) -> Iterator[tuple[StreamPosition, Where, str | dict]]:
    """This rank's items (every world_size-th of the epoch order), from `start`, for `epochs` epochs
    (None: forever). Ranks never share an item, and together they cover the epoch."""
    epoch = start.epoch
    skip = start.taken
    while epochs is None or epoch < start.epoch + epochs:
        taken = 0
        for i, (where, payload) in enumerate(epoch_items(shards, epoch, seed, window)):
            if i % world_size != rank:
                continue
            if taken >= skip:
                yield StreamPosition(epoch, taken), where, payload
            taken += 1
        if taken == 0:
            raise DataSourceError(f"rank {rank} of {world_size} got no records: the data has fewer records than ranks")
        epoch, skip = epoch + 1, 0


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
