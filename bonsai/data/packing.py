"""Rows of tokens for the model: several documents packed per row, or one per row with padding.

A packed row carries, per token, the index of the document it belongs to and positions restarting at 0
for every document. The mask-free attentions (bonsai.model.attention) isolate documents from the
positions; `block_causal_mask` turns the indices into the dense 4D mask that sdpa and eager need.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from bonsai.data.records import Record, Where
from bonsai.data.stream import StreamPosition
from bonsai.data.template import IGNORE_INDEX, EncodedRecord


@dataclass(frozen=True)
class Document:
    record: Record
    encoded: EncodedRecord
    where: Where
    position: StreamPosition

    def __len__(self) -> int:
        return len(self.encoded.input_ids)


@dataclass
class Row:
    documents: list[Document] = field(default_factory=list)
    resume: StreamPosition | None = None
    """Where the stream resumes once this row has been trained on (set by the packer)."""

    @property
    def length(self) -> int:
        return sum(len(d) for d in self.documents)


def _check_fits(doc: Document, max_length: int) -> None:
    if len(doc) > max_length:
        raise ValueError(f"{doc.where}: {len(doc)} tokens exceed data.max_length {max_length}")


def pack_documents(documents: Iterable[Document], max_length: int) -> Iterator[Row]:
    """Greedy, in stream order, documents never split: a row is flushed when the next document does
    not fit. Simple and order-preserving, but the row's tail is wasted whenever the next document is long."""
    row = Row()
    for doc in documents:
        _check_fits(doc, max_length)
        if row.documents and row.length + len(doc) > max_length:
            row.resume = row.documents[-1].position.next()
            yield row
            row = Row()
        row.documents.append(doc)
    if row.documents:
        row.resume = row.documents[-1].position.next()
        yield row


def pack_best_fit(documents: Iterable[Document], max_length: int, window: int, skip_rows: int = 0) -> Iterator[Row]:
    """Best-fit decreasing over consecutive windows of `window` documents (a window ends early at an
    epoch boundary): each document, longest first, goes to the row it fills most tightly. Then the
    documents that follow in the stream top up the rows' gaps, tightest fit first, until one fits
    nowhere: it opens the next window. Documents are never split.

    Resuming stays exact with one position per rank: a window's rows are a function of the stream from
    its first document, so a row's resume position is (that document, rows of the window done); the
    last row of a window resumes after the last document the window took. `skip_rows` drops that many
    rows of the first window."""
    stream = iter(documents)
    doc = next(stream, None)
    while doc is not None:
        window_docs: list[Document] = []
        while doc is not None and len(window_docs) < window and (
                not window_docs or doc.position.epoch == window_docs[0].position.epoch):
            _check_fits(doc, max_length)
            window_docs.append(doc)
            doc = next(stream, None)
        bins, free = _best_fit(window_docs, max_length)
        while doc is not None:  # top up the gaps with what comes next, in stream order
            _check_fits(doc, max_length)
            at = bisect.bisect_left(free, (len(doc), -1))
            if at == len(free):
                break
            _place(bins, free, at, len(window_docs), len(doc))
            window_docs.append(doc)
            doc = next(stream, None)
        yield from _rows_of(window_docs, bins)[skip_rows:]
        skip_rows = 0


def _best_fit(docs: list[Document], max_length: int) -> tuple[list[list[int]], list[tuple[int, int]]]:
    bins: list[list[int]] = []  # document indices per row
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted: bisect finds the tightest fit
    for i in sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i)):
        at = bisect.bisect_left(free, (len(docs[i]), -1))
        if at == len(free):
            bins.append([i])
            bisect.insort(free, (max_length - len(docs[i]), len(bins) - 1))
        else:
            _place(bins, free, at, i, len(docs[i]))
    return bins, free


def _place(bins: list[list[int]], free: list[tuple[int, int]], at: int, doc: int, need: int) -> None:
    room, b = free.pop(at)
    bins[b].append(doc)
    bisect.insort(free, (room - need, b))


def _rows_of(docs: list[Document], bins: list[list[int]]) -> list[Row]:
    """Rows in stream order of their first document, documents in stream order within a row."""
    ordered = sorted((sorted(b) for b in bins), key=lambda b: b[0])
    start = docs[0].position
    rows = [Row([docs[i] for i in b], StreamPosition(start.epoch, start.taken, k + 1, seek=start.seek))
            for k, b in enumerate(ordered)]
    rows[-1].resume = docs[-1].position.next()
    return rows


def one_document_per_row(documents: Iterable[Document]) -> Iterator[Row]:
    for doc in documents:
        yield Row([doc], doc.position.next())


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L), IGNORE_INDEX outside responses
    position_ids: torch.Tensor  # (B, L), restarting at 0 for every document
    doc_index: torch.Tensor  # (B, L), index into `records`, -1 on padding
    records: list[Record]
    # Counted in Python as the batch is built: read from the tensors, each would be a host sync on a GPU.
    num_target_tokens: int = 0  # response tokens (labels that are not IGNORE_INDEX)
    num_tokens: int = 0  # real tokens (not padding)
    host_position_ids: torch.Tensor | None = None  # after `to`: the host copy (documents found without a sync)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.position_ids.to(device),
            self.doc_index.to(device),
            self.records,
            self.num_target_tokens,
            self.num_tokens,
            self.position_ids if self.host_position_ids is None else self.host_position_ids,
        )


def collate(rows: list[Row], pad_id: int, pad_to: int | None = None) -> Batch:
    """Stack rows, padding to `pad_to` (fixed shapes) or to the longest row. Each row is built as Python
    lists and each field becomes a tensor in one call (four small copies per document cost more)."""
    length = pad_to or max(r.length for r in rows)
    fields: tuple[list, list, list, list] = ([], [], [], [])
    records: list[Record] = []
    targets = 0
    for row in rows:
        ids, labels, positions, owners = [], [], [], []
        for doc in row.documents:
            ids += doc.encoded.input_ids
            labels += doc.encoded.labels
            positions += range(len(doc))
            owners += [len(records)] * len(doc)
            records.append(doc.record)
            targets += doc.encoded.num_target_tokens
        pad = length - len(ids)
        # Padding restarts its positions too, so position-based document detection sees it as one more
        # document (it carries no loss) instead of the tail of the last real one.
        for field, tail in zip((ids, labels, positions, owners), ([pad_id] * pad, [IGNORE_INDEX] * pad, range(pad), [-1] * pad)):
            field += tail
        for out, field in zip(fields, (ids, labels, positions, owners)):
            out.append(field)
    tensors = [torch.tensor(f, dtype=torch.long) for f in fields]
    return Batch(*tensors, records, targets, sum(r.length for r in rows))


def block_causal_mask(doc_index: torch.Tensor) -> torch.Tensor:
    """(B, L) document indices -> (B, 1, L, L) boolean mask, True where a query may attend: causal, and
    within one document. Padding attends only to itself, which keeps its softmax finite (it carries no loss)."""
    length = doc_index.shape[1]
    same_doc = doc_index[:, :, None] == doc_index[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_index.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=doc_index.device)
    return ((same_doc & causal & (doc_index[:, None, :] >= 0)) | diagonal).unsqueeze(1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The same mask for attention that adds it to the scores (eager)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)
