"""What a checkpoint knows of the data it was trained on, so that a resume knows whether the bytes its
saved positions point into are still the same.

A stream position is a byte offset (and line) into a shard. If a shard is appended to, edited or
replaced between a stop and a resume, the same offsets point at other records: some are trained twice,
some never, a resume can start mid-line. So every checkpoint records each shard's identity (its size,
modification time or ETag, and the sha256 of its first and last 64 KiB, the same cheap facts the scan
cache trusts), and a resume compares: a change is refused by default, naming the shard and what
changed, and `data.on_change: new_epoch` starts a new epoch over the changed data instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import fsspec

EDGE_BYTES = 1 << 16
_MODIFIED = ("mtime", "LastModified", "last_modified", "ETag", "etag")


@dataclass(frozen=True)
class ShardIdentity:
    size: int
    modified: str
    head: str  # sha256 of the first EDGE_BYTES
    tail: str  # sha256 of the last EDGE_BYTES (up to `size`)

    def to_dict(self) -> dict:
        return asdict(self)


def _sha(f, start: int, end: int) -> str:
    f.seek(start)
    return hashlib.sha256(f.read(max(0, end - start))).hexdigest()


def shard_identity(url: str) -> ShardIdentity:
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    size = int(info.get("size") or 0)
    modified = next((str(info[k]) for k in _MODIFIED if k in info), "")
    with fs.open(path, "rb") as f:
        return ShardIdentity(size, modified, _sha(f, 0, min(size, EDGE_BYTES)), _sha(f, max(0, size - EDGE_BYTES), size))


def shard_identities(urls: list[str]) -> dict[str, dict]:
    return {url: shard_identity(url).to_dict() for url in urls}


def describe_change(url: str, saved: dict) -> str | None:
    """What happened to the shard at `url` since its identity `saved` was taken, or None if nothing did."""
    try:
        now = shard_identity(url)
    except FileNotFoundError:
        return f"{url}: removed"
    old = ShardIdentity(**saved)
    if now == old:
        return None
    if now.size > old.size and _range_hash(url, 0, min(old.size, EDGE_BYTES)) == old.head \
            and _range_hash(url, max(0, old.size - EDGE_BYTES), old.size) == old.tail:
        return f"{url}: appended to ({old.size:,} -> {now.size:,} bytes)"
    if now.size == old.size and now.head == old.head and now.tail == old.tail:
        return f"{url}: modified in place (same size, modification time {old.modified} -> {now.modified})"
    return f"{url}: edited ({old.size:,} -> {now.size:,} bytes)"


def _range_hash(url: str, start: int, end: int) -> str:
    with fsspec.open(url, "rb") as f:
        return _sha(f, start, end)


def data_changes(saved: dict[str, dict], urls: list[str]) -> list[str]:
    """One line per shard added, removed, appended to or edited since `saved` (a checkpoint's record)."""
    changes = [f"{url}: added" for url in urls if url not in saved]
    changes += [c for url, identity in saved.items() if (c := describe_change(url, identity))]
    return changes
