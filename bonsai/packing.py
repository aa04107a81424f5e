"""Rows of tokens for the model: several documents packed per row, or one per row with padding.

A packed row carries, per token, the index of the document it belongs to. `block_causal_mask` turns
that into a 4D mask so a document attends only to itself: position_ids restarting at 0 do
not isolate documents in transformers 5.x Phi (sdpa or eager), an explicit mask does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from bonsai.records import Record, Where
from bonsai.stream import StreamPosition
from bonsai.template import IGNORE_INDEX, EncodedRecord


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

    @property
    def length(self) -> int:
        return sum(len(d) for d in self.documents)

    @property
    def resume(self) -> StreamPosition:
        """Where the stream resumes once this row has been trained on."""
        return self.documents[-1].position.next()


def pack_documents(documents: Iterable[Document], max_length: int) -> Iterator[Row]:
    """Greedy, in stream order, documents never split: a row is flushed when the next document does
    not fit. Keeping stream order is what makes a row's resume position a single stream position."""
    row = Row()
    for doc in documents:
        if len(doc) > max_length:
            raise ValueError(f"{doc.where}: {len(doc)} tokens exceed data.max_length {max_length}")
        if row.documents and row.length + len(doc) > max_length:
            yield row
            row = Row()
        row.documents.append(doc)
    if row.documents:
        yield row


def one_document_per_row(documents: Iterable[Document]) -> Iterator[Row]:
    for doc in documents:
        yield Row([doc])


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L), IGNORE_INDEX outside responses
    position_ids: torch.Tensor  # (B, L), restarting at 0 for every document
    doc_index: torch.Tensor  # (B, L), index into `records`, -1 on padding
    records: list[Record]

    @property
    def num_target_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.position_ids.to(device),
            self.doc_index.to(device),
            self.records,
        )


def collate(rows: list[Row], pad_id: int, pad_to: int | None = None) -> Batch:
    """Stack rows, padding to `pad_to` (fixed shapes) or to the longest row."""
    length = pad_to or max(r.length for r in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    doc_index = torch.full(shape, -1, dtype=torch.long)
    records: list[Record] = []
    for b, row in enumerate(rows):
        start = 0
        for doc in row.documents:
            end = start + len(doc)
            input_ids[b, start:end] = torch.tensor(doc.encoded.input_ids)
            labels[b, start:end] = torch.tensor(doc.encoded.labels)
            position_ids[b, start:end] = torch.arange(len(doc))
            doc_index[b, start:end] = len(records)
            records.append(doc.record)
            start = end
    return Batch(input_ids, labels, position_ids, doc_index, records)


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
