"""From shard items to documents: parse, validate, pick the split, tokenize with the template.

Bad records are handled by `data.on_bad_record`: `error` stops at start-up with the file, line and
field of each bad record; `skip` lists each one in quarantine/ and counts it. A scan of the rank's
share of the data runs once before training, so an error never surfaces hours into a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Literal

import fsspec

from bonsai.config import DataConfig
from bonsai.data.elastic import EpochLayout
from bonsai.data.exclude import read_exclusions
from bonsai.data.packing import Document, Row, one_document_per_row, pack_best_fit, pack_documents
from bonsai.data.records import BadRecord, Record, in_eval_split, validate_record
from bonsai.data.records import Where
from bonsai.data.scan_cache import ScanCache, ScanReport
from bonsai.data.line_index import LineIndex, is_indexable, join_pieces
from bonsai.data.shard_piece import PieceReader
from bonsai.data.stream import (StreamPosition, list_shards, parse_payload, rank_items, read_shard,
                                sha256_of, verify_manifest)
from bonsai.data.template import encode_record, render_prompt

Split = Literal["train", "eval"]
Use = Literal["train", "eval", "excluded"]
MAX_ERRORS_SHOWN = 20


class RankData:
    """One rank's view of the dataset: its documents and rows, for either split."""

    def __init__(self, cfg: DataConfig, tokenizer, *, seed: int, rank: int, world_size: int):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shards = list_shards(cfg.path)
        verify_manifest(cfg.path, self.shards)
        self.skipped = 0
        self.excluded = read_exclusions(cfg.exclude) if cfg.exclude else frozenset()
        self.layouts: dict[int, EpochLayout] = {}  # what remains of the train epochs after a resize
        self.indexes: dict[str, LineIndex] | None = None  # every shard's, once `scan` has run

    def _prepare(self, position: StreamPosition, where, payload) -> tuple[Use, Document | Record]:
        """(split, document); ("excluded", record) for a record data.exclude lists: it is not tokenized,
        so one excluded for being too long is not an error."""
        record = validate_record(parse_payload(payload, where, self.cfg.max_record_bytes), where)
        if record.id in self.excluded:
            return "excluded", record
        encoded = encode_record(self.tokenizer, record)
        if len(encoded.input_ids) > self.cfg.max_length:
            raise BadRecord(
                where,
                "(record)",
                f"{len(encoded.input_ids)} tokens with the template exceed data.max_length {self.cfg.max_length}",
                record.id,
            )
        split: Use = "eval" if in_eval_split(record.id, self.cfg.eval_fraction) else "train"
        return split, Document(record, encoded, where, position)

    def _items(self, start: StreamPosition, epochs: int | None, train: bool):
        """The train split's stream (shuffled, minus what a resize found done) or the whole data in file
        order (the eval split, the scan)."""
        return rank_items(
            self.shards,
            seed=self.seed,
            window=self.cfg.shuffle_window if train else 1,
            rank=self.rank,
            world_size=self.world_size,
            start=start,
            epochs=epochs,
            layouts=self.layouts if train else None,
            indexes=self.indexes,
        )

    def scan(self, cache: ScanCache | None = None) -> ScanReport:
        """This rank's part of the data, checked and counted: the whole shards it owns when there are at
        least as many shards as ranks (scan_owners), else its piece of every shard (a byte range of a
        JSONL shard, rows of a Parquet one: bonsai.data.shard_piece); either way each rank reads about
        data / ranks. A part comes from `cache` when its shard has not changed since it was scanned. The
        scan also builds the LineIndex of each JSONL shard or piece it reads, kept in the cache for the
        other ranks (see `load_indexes`), so that the stream reads only this rank's records. A piece's
        bad records are numbered within the piece until ScanReport.place_lines."""
        report, self.indexes = ScanReport(), {}
        owners = scan_owners(self.shards, self.world_size)
        for k, shard in enumerate(self.shards):
            if owners is None or owners[k] == self.rank:  # others: their findings come through the gather
                report.add(self._scan_part(shard, cache, piece=owners is None))
        return report

    def _scan_part(self, shard: str, cache: ScanCache | None, piece: bool) -> ScanReport:
        """One shard's part for this rank, and the LineIndex of what it read (the shard's, or this rank's
        piece's when the shard's is not in the cache yet)."""
        entry, part = cache.get(shard) if cache else (None, None)
        whole = cache.get_index(shard) if cache else None
        index = cache.get_index(shard, self.rank) if whole is None and piece and cache else whole
        if part is None or (index is None and is_indexable(shard)):
            scanned, built = self._read_part(shard, piece, check=part is None)  # else only its index is gone
            if part is None:
                part = scanned
                if cache:
                    cache.put(entry, part)
            if index is None:
                index = built
                if cache and built is not None:
                    cache.put_index(shard, built, self.rank if piece else None)
        self.indexes[shard] = whole if piece else index  # a piece's is joined to the others' in load_indexes
        return part

    def _read_part(self, shard: str, piece: bool, check: bool = True) -> tuple[ScanReport, LineIndex | None]:
        """Read the shard whole or this rank's piece of it: its records checked and counted (`check`),
        and its LineIndex (lines numbered within a piece)."""
        report = ScanReport()
        index = LineIndex() if is_indexable(shard) else None
        items = PieceReader(shard, self.rank, self.world_size) if piece else read_shard(shard)
        for j, (where, payload) in enumerate(items):
            if index is not None:
                index.add(payload.offset, payload.offset + len(payload.data), where.line)
            if check:
                self._check(StreamPosition(0, j), where, payload, report)
        if piece and index is not None:
            report.piece_lines[shard] = items.lines
        return report, index

    def _check(self, position: StreamPosition, where: Where, payload, report: ScanReport) -> None:
        try:
            split, doc = self._prepare(position, where, payload)
        except BadRecord as bad:
            report.bad.append(bad)
            return
        if split == "excluded":
            report.excluded.append(doc.id)
        elif split == "train":
            report.count_train(doc.record.category, doc.record.lang, doc.encoded.num_target_tokens)
        else:
            report.eval_records += 1

    def load_indexes(self, cache: ScanCache | None, bases: list[dict[str, int]] | None = None) -> bool:
        """Every shard's LineIndex, those other ranks scanned from `cache` (call after every rank's
        scan), a shard scanned in pieces joined from its pieces' (`bases`: shard_piece.line_bases of
        the ranks' ScanReport.piece_lines) and kept whole for a relaunch. False, and the stream reads
        every line as before, when one is missing: a Parquet shard, or a run dir not shared by the nodes."""
        for shard in self.shards:
            if self.indexes.get(shard) is None and cache and is_indexable(shard):
                self.indexes[shard] = cache.get_index(shard)
                if self.indexes[shard] is None and bases is not None:
                    self.indexes[shard] = self._join_pieces(shard, cache, bases)
        if any(self.indexes.get(shard) is None for shard in self.shards):
            self.indexes = None
        return self.indexes is not None

    def unindexed_reason(self) -> str | None:
        """Why each of several ranks' streams reads every record, not only its own (None: it does not)."""
        if self.world_size == 1 or self.indexes is not None:
            return None
        parquet = sum(not is_indexable(shard) for shard in self.shards)
        if parquet:
            return (f"{parquet} Parquet shard(s) have no line index (a row is read with its row group); "
                    f"`bonsai data shard {self.cfg.path} --shards N --out DIR` writes JSONL shards, of which "
                    f"each rank reads only its own records")
        return "a shard's line index is not in the scan cache (is the run dir on storage every node shares?)"

    def _join_pieces(self, shard: str, cache: ScanCache, bases: list[dict[str, int]]) -> LineIndex | None:
        pieces = [cache.get_index(shard, rank) for rank in range(self.world_size)]
        if any(piece is None for piece in pieces):
            return None
        whole = join_pieces(pieces, [base.get(shard, 0) for base in bases])
        if self.rank == 0:
            cache.put_index(shard, whole)  # a relaunch, on any number of processes, finds it whole
        return whole

    def documents(self, split: Split, start: StreamPosition, epochs: int | None) -> Iterator[Document]:
        """Train: shuffled, epoch after epoch. Eval: file order. Bad records were reported by `scan`;
        here they are skipped under `skip` and raise under `error` (the data changed since the scan)."""
        for position, where, payload in self._items(start, epochs, train=split == "train"):
            try:
                doc_split, doc = self._prepare(position, where, payload)
            except BadRecord:
                if self.cfg.on_bad_record == "error":
                    raise
                self.skipped += 1
                continue
            if doc_split == split:
                yield doc

    def rows(self, split: Split, start: StreamPosition = StreamPosition(), epochs: int | None = None) -> Iterator[Row]:
        docs = self.documents(split, start, epochs)
        if not self.cfg.packing:
            return one_document_per_row(docs)
        if self.cfg.pack_window == 0:
            return pack_documents(docs, self.cfg.max_length)
        return pack_best_fit(docs, self.cfg.max_length, self.cfg.pack_window, skip_rows=start.packed_rows)


def scan_owners(shards: list[str], world_size: int) -> list[int] | None:
    """Which rank scans each shard whole: the largest first, each to the rank with the fewest bytes so
    far (ties: the lowest rank), the same on every rank. None when there are fewer shards than ranks:
    then every rank scans a piece of every shard (bonsai.data.shard_piece)."""
    if world_size == 1 or len(shards) < world_size:
        return None if world_size > 1 else [0] * len(shards)
    sizes = [fs.size(path) or 0 for fs, path in map(fsspec.core.url_to_fs, shards)]
    load, owners = [0] * world_size, [0] * len(shards)
    for k in sorted(range(len(shards)), key=lambda k: (-sizes[k], k)):
        owners[k] = min(range(world_size), key=lambda r: (load[r], r))
        load[owners[k]] += sizes[k]
    return owners


def describe_bad_records(messages: list[str]) -> str:
    shown = "\n".join(f"  {m}" for m in messages[:MAX_ERRORS_SHOWN])
    more = f"\n  ... and {len(messages) - MAX_ERRORS_SHOWN} more" if len(messages) > MAX_ERRORS_SHOWN else ""
    return f"{len(messages)} bad record(s):\n{shown}{more}"


def read_records(path: str) -> tuple[list[Record], list[Where], list[BadRecord]]:
    """Every record under `path`, in shard order: the valid ones with where each came from, and the bad."""
    records, wheres, bad = [], [], []
    for shard in list_shards(path):
        for where, payload in read_shard(shard):
            try:
                records.append(validate_record(parse_payload(payload, where), where))
                wheres.append(where)
            except BadRecord as err:
                bad.append(err)
    return records, wheres, bad


def template_corpus(path: str) -> tuple[str, Callable[[], Iterator[str]]]:
    """The data's identity (sha256 over its shards' names and bytes) and, lazily, its text as training
    sees it (prompts as the template renders them, and outputs): what the tiny model's tokenizer learns."""
    identity = hashlib.sha256()
    for shard in list_shards(path):
        identity.update(shard.encode() + sha256_of(shard).encode())

    def texts() -> Iterator[str]:
        for record in read_valid_records(path):
            yield render_prompt(record) + record.output

    return identity.hexdigest(), texts


def read_valid_records(path: str) -> list[Record]:
    """The valid records under `path`; bad ones are left to the training scan (or the audit) to report."""
    return read_records(path)[0]
