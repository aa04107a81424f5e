"""The start-up scan's findings per shard, kept in the run directory: a relaunch (a requeue, a resume, a
longer max_steps) reads and tokenizes only the shards that changed since, instead of the whole epoch.

An entry is valid for one shard's content (its size, modification time or ETag, and the sha256 of its
first 64 KiB), one rank's part of it under one world size, and one way of turning records into tokens:
the tokenizer and template (fingerprinted by the tokens of a fixed record), data.max_length,
eval_fraction, max_record_bytes and the ids data.exclude lists. Anything else makes a new key, and the
shard is scanned again. Beside the entries, each JSONL shard's LineIndex (bonsai.data.line_index),
keyed by its content alone.
"""

from __future__ import annotations

import hashlib
from collections import Counter
import json
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from bonsai.config import DataConfig
from bonsai.data.records import BadRecord, Record, Where
from bonsai.data.exclude import exclusions_digest
from bonsai.data.line_index import LineIndex
from bonsai.data.template import encode_record
from bonsai.io import write_json

SCAN_CACHE_VERSION = 4  # raise when what a scan computes changes
PREFIX_BYTES = 1 << 16
_PROBE = Record(id="scan-cache-probe", instruction="日本で一番高い山は? Which is the highest mountain?",
                input="翻訳: 富士山", output="Mount Fuji / 富士山", category="translation", lang="en", source_lang="ja")


@dataclass
class ScanReport:
    """One epoch of one rank's share, checked."""

    train_records: int = 0
    eval_records: int = 0
    train_target_tokens: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    """Ids of the records data.exclude left out (they still hold their place in the stream)."""
    train_by_group: Counter[str] = field(default_factory=Counter)
    """Training records per "category/lang" (the model card's data summary)."""
    piece_lines: dict[str, int] = field(default_factory=dict)
    """Per JSONL shard this rank scanned a piece of (bonsai.data.shard_piece): the lines that started in
    it. Its bad records are numbered within the piece until `place_lines` puts them in the shard."""

    def count_train(self, category: str, lang: str, target_tokens: int) -> None:
        self.train_records += 1
        self.train_target_tokens += target_tokens
        self.train_by_group[f"{category}/{lang}"] += 1

    @property
    def items(self) -> int:
        return self.train_records + self.eval_records + len(self.bad) + len(self.excluded)

    def add(self, other: ScanReport) -> None:
        self.train_records += other.train_records
        self.eval_records += other.eval_records
        self.train_target_tokens += other.train_target_tokens
        self.bad += other.bad
        self.excluded += other.excluded
        self.train_by_group.update(other.train_by_group)
        self.piece_lines.update(other.piece_lines)

    def place_lines(self, bases: dict[str, int]) -> None:
        """Number the bad records of this rank's pieces within their shards (`bases`: line_bases')."""
        self.bad = [BadRecord(Where(b.where.path, b.where.line + bases.get(b.where.path, 0)), b.field, b.reason,
                              b.raw) if b.where.path in self.piece_lines else b for b in self.bad]
        self.piece_lines = {}

    def to_dict(self) -> dict:
        return {"train_records": self.train_records, "eval_records": self.eval_records,
                "train_target_tokens": self.train_target_tokens, "bad": [b.as_quarantine_row() for b in self.bad],
                "excluded": self.excluded, "train_by_group": self.train_by_group,
                "piece_lines": self.piece_lines}

    @classmethod
    def from_dict(cls, d: dict) -> ScanReport:
        bad = [BadRecord(Where(b["path"], b["line"]), b["field"], b["reason"], b["raw"]) for b in d["bad"]]
        return cls(d["train_records"], d["eval_records"], d["train_target_tokens"], bad, list(d["excluded"]),
                   Counter(d["train_by_group"]), dict(d["piece_lines"]))


def combine_reports(reports: list[ScanReport]) -> tuple[ScanReport, list[dict[str, int]]]:
    """Every rank's report (in rank order) as one, each piece's bad records numbered in their shard, and
    the ranks' line bases (shard_piece.line_bases), with which their pieces' line indexes join."""
    from bonsai.data.shard_piece import line_bases

    bases = line_bases([r.piece_lines for r in reports])
    whole = ScanReport()
    for report, base in zip(reports, bases, strict=True):
        report.place_lines(base)
        whole.add(report)
    return whole, bases


def shard_identity(url: str) -> str:
    """What says a shard's bytes are the ones scanned before, without reading it whole."""
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    changed = next((str(info[k]) for k in ("mtime", "LastModified", "last_modified", "ETag", "etag") if k in info),
                   "")
    with fs.open(path, "rb") as f:
        prefix = hashlib.sha256(f.read(PREFIX_BYTES)).hexdigest()
    return f"{info.get('size')}:{changed}:{prefix}"


def settings_fingerprint(tokenizer, cfg: DataConfig, excluded: frozenset[str] = frozenset()) -> str:
    """The tokenizer and template as they encode a fixed record, and the data settings a scan applies
    (the excluded ids by their content, not by the name of the file that lists them)."""
    encoded = encode_record(tokenizer, _PROBE)
    return hashlib.sha256(json.dumps([SCAN_CACHE_VERSION, encoded.input_ids, encoded.labels, cfg.max_length,
                                      cfg.eval_fraction, cfg.max_record_bytes, exclusions_digest(excluded)]
                                     ).encode()).hexdigest()


class ScanCache:
    def __init__(self, directory: Path, fingerprint: str, rank: int, world_size: int):
        self.directory, self.fingerprint = Path(directory), fingerprint
        self.rank, self.world_size = rank, world_size
        self.hits = self.misses = 0
        self._identities: dict[str, str] = {}

    def _identity(self, url: str) -> str:
        if url not in self._identities:
            self._identities[url] = shard_identity(url)
        return self._identities[url]

    def _entry(self, url: str) -> Path:
        key = json.dumps([url, self._identity(url), self.rank, self.world_size, self.fingerprint])
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _index_entry(self, url: str) -> Path:
        """A shard's LineIndex depends on its bytes alone: any world size and settings share it."""
        key = json.dumps([url, self._identity(url), "line-index", SCAN_CACHE_VERSION])
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.index"

    def _piece_entry(self, url: str, rank: int) -> Path:
        """The LineIndex of one rank's piece of a shard (lines numbered within the piece)."""
        key = json.dumps([url, self._identity(url), "line-index-piece", rank, self.world_size, SCAN_CACHE_VERSION])
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.index"

    def get_index(self, url: str, piece: int | None = None) -> LineIndex | None:
        """The shard's LineIndex, or (`piece`: a rank) that rank's piece's, from a scan of pieces."""
        return LineIndex.load(self._index_entry(url) if piece is None else self._piece_entry(url, piece))

    def put_index(self, url: str, index: LineIndex, piece: int | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        index.save(self._index_entry(url) if piece is None else self._piece_entry(url, piece))

    def get(self, url: str) -> tuple[Path, ScanReport | None]:
        entry = self._entry(url)
        try:
            report = ScanReport.from_dict(json.loads(entry.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):  # missing, or torn by a crash: scan again
            self.misses += 1
            return entry, None
        self.hits += 1
        return entry, report

    @staticmethod
    def put(entry: Path, report: ScanReport) -> None:
        write_json(entry, report.to_dict())
