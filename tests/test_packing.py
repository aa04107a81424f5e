"""Packed documents cannot see each other: each one's loss packed equals its loss alone."""

import pytest
import torch

from bonsai.config import ModelConfig
from bonsai.loss import forward_loss
from bonsai.model import load_model
from bonsai.packing import Document, Row, block_causal_mask, collate, pack_documents
from bonsai.records import Record, Where
from bonsai.stream import StreamPosition
from bonsai.template import encode_record
from conftest import sample_records


def _documents(tokenizer, n):
    docs = []
    for i, raw in enumerate(sample_records()[:n]):
        record = Record(**{k: raw.get(k, "") if k != "source_lang" else raw.get(k) for k in
                           ("id", "instruction", "input", "output", "category", "lang", "source_lang")})
        docs.append(Document(record, encode_record(tokenizer, record), Where("mem", i + 1), StreamPosition(0, i)))
    return docs


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_dir):
    m = load_model(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir), attn_implementation=request.param),
                   torch.float32)
    return m.eval()


def test_packed_loss_equals_each_document_alone(model, tokenizer):
    docs = _documents(tokenizer, 5)
    packed = collate([Row(docs)], tokenizer.pad_token_id, pad_to=sum(len(d) for d in docs) + 7)
    with torch.no_grad():
        together = forward_loss(model, packed)
        for i, doc in enumerate(docs):
            alone = forward_loss(model, collate([Row([doc])], tokenizer.pad_token_id))
            assert together.record_tokens[i] == alone.record_tokens[0] == doc.encoded.num_target_tokens
            torch.testing.assert_close(together.record_loss_sum[i], alone.record_loss_sum[0], rtol=1e-5, atol=1e-5)


def test_position_ids_with_a_padding_mask_do_not_isolate_documents(model, tokenizer):
    """Why Bonsai passes its own mask: transformers 5.x detects packing from position_ids only when no 2D
    mask is given; the usual all-ones padding mask silently lets later documents see earlier ones."""
    docs = _documents(tokenizer, 3)
    packed = collate([Row(docs)], tokenizer.pad_token_id)
    alone = collate([Row([docs[1]])], tokenizer.pad_token_id)
    with torch.no_grad():
        leaky = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                      attention_mask=torch.ones_like(packed.input_ids)).logits[0, packed.doc_index[0] == 1]
        isolated = model(input_ids=alone.input_ids, position_ids=alone.position_ids).logits[0]
    assert not torch.allclose(leaky, isolated, atol=1e-3)


def test_greedy_packing_keeps_order_and_never_splits(tokenizer):
    docs = _documents(tokenizer, 40)
    rows = list(pack_documents(docs, max_length=200))
    assert [d for r in rows for d in r.documents] == docs
    assert all(r.length <= 200 for r in rows)
    # a row is only flushed when the next document would not fit
    for row, nxt in zip(rows, rows[1:]):
        assert row.length + len(nxt.documents[0]) > 200
    # resuming after row k starts at row k+1's first document
    for row, nxt in zip(rows, rows[1:]):
        assert row.resume == nxt.documents[0].position


def test_block_mask_shape_and_padding():
    doc_index = torch.tensor([[0, 0, 1, 1, -1]])
    allowed = block_causal_mask(doc_index)[0, 0]
    assert allowed.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, False, False, True],
    ]
