"""Packed documents cannot see each other: each one's loss packed equals its loss alone."""

import itertools

import pytest
import torch

from bonsai.config import DataConfig, ModelConfig
from bonsai.data.dataset import RankData
from bonsai.model.attention import document_bounds, needs_dense_mask
from bonsai.model.loss import forward_loss
from bonsai.model.loss_head import find_loss_head
from bonsai.model.loading import load_model
from bonsai.data.packing import Document, Row, block_causal_mask, collate, pack_best_fit, pack_documents
from bonsai.data.records import Record, Where
from bonsai.data.stream import StreamPosition
from bonsai.data.template import encode_record
from conftest import SAMPLE, sample_records


def _documents(tokenizer, n):
    docs = []
    for i, raw in enumerate(sample_records()[:n]):
        record = Record(**{k: raw.get(k, "") if k != "source_lang" else raw.get(k) for k in
                           ("id", "instruction", "input", "output", "category", "lang", "source_lang")})
        docs.append(Document(record, encode_record(tokenizer, record), Where("mem", i + 1), StreamPosition(0, i)))
    return docs


# Every attention that trains on CPU, each with whole-row logits and with a chunked loss whose chunks
# (16 positions) cut through documents.
CPU_PATHS = [("sdpa_varlen", 16), ("sdpa_varlen", 0), ("sdpa", 16), ("eager", 0)]


@pytest.fixture(scope="module", params=CPU_PATHS, ids=[f"{a}-chunk{c}" for a, c in CPU_PATHS])
def model(request, tiny_dir):
    attention, chunk = request.param
    m = load_model(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir), attn_implementation=attention,
                                              loss_chunk_tokens=chunk), torch.float32)
    assert m.config._attn_implementation == attention
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


def _gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_packed_gradients_equal_the_sum_of_each_document_alone(model, tokenizer):
    """Two rows of several documents (one row padded) against every document in its own forward."""
    docs = _documents(tokenizer, 7)
    model.zero_grad(set_to_none=True)
    forward_loss(model, collate([Row(docs[:4]), Row(docs[4:])], tokenizer.pad_token_id)).loss_sum.backward()
    packed = _gradients(model)
    for doc in docs:
        forward_loss(model, collate([Row([doc])], tokenizer.pad_token_id)).loss_sum.backward()
    alone = _gradients(model)
    assert packed.keys() == alone.keys() and len(packed) > 10
    for name in packed:
        torch.testing.assert_close(packed[name], alone[name], rtol=1e-4, atol=1e-5, msg=name)


def test_chunked_loss_equals_whole_row_logits(tiny_dir, tokenizer):
    """Same per-token losses within 1e-5 and the same gradients whatever the chunk size (1 position, a
    chunk that cuts documents, one chunk for all), and no chunking when not asked."""
    docs = _documents(tokenizer, 6)
    batch = collate([Row(docs[:3]), Row(docs[3:])], tokenizer.pad_token_id)
    losses, grads = {}, {}
    for chunk in (0, 1, 7, 64, 4096):
        m = load_model(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir), loss_chunk_tokens=chunk), torch.float32)
        assert (find_loss_head(m) is None) == (chunk == 0)
        out = forward_loss(m, batch)
        out.loss_sum.backward()
        losses[chunk], grads[chunk] = out.record_loss_sum, _gradients(m)
    for chunk in losses:
        torch.testing.assert_close(losses[chunk], losses[0], rtol=1e-5, atol=1e-5, msg=f"chunk {chunk}")
        for name in grads[0]:
            torch.testing.assert_close(grads[chunk][name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_chunked_loss_refuses_an_objective_other_than_the_sum(tiny_dir, tokenizer):
    """Its gradients are taken in forward for a plain sum; a weighted sum must fail, not train wrong."""
    m = load_model(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir), loss_chunk_tokens=8), torch.float32)
    batch = collate([Row(_documents(tokenizer, 2))], tokenizer.pad_token_id)
    with find_loss_head(m).scoring(batch.labels[:, 1:]):
        token_loss = m(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    (token_loss * 2).sum().backward()  # a uniform scale is a sum
    with find_loss_head(m).scoring(batch.labels[:, 1:]):
        token_loss = m(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    weights = torch.linspace(0.5, 1.5, token_loss.shape[1])
    with pytest.raises(RuntimeError, match="only a sum"):
        (token_loss * weights).sum().backward()


def test_document_bounds_follow_transformers_rule():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    assert document_bounds(positions) == [[(0, 3), (3, 5), (5, 6), (6, 10)], [(0, 10)]]


def test_the_all_ones_mask_trap_is_caught_or_harmless(model, tokenizer):
    """transformers detects packing from position_ids only when no 2-D mask is given, so the usual all-ones
    padding mask silently lets later documents see earlier ones under sdpa and eager: the comparison this
    file makes catches that leak. sdpa_varlen reads the documents from position_ids whatever the mask."""
    docs = _documents(tokenizer, 3)
    packed = collate([Row(docs)], tokenizer.pad_token_id)
    alone = collate([Row([docs[1]])], tokenizer.pad_token_id)
    with torch.no_grad():
        with_ones = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                          attention_mask=torch.ones_like(packed.input_ids)).logits[0, packed.doc_index[0] == 1]
        isolated = model(input_ids=alone.input_ids, position_ids=alone.position_ids).logits[0]
    leaks = not torch.allclose(with_ones, isolated, atol=1e-3)
    assert leaks == needs_dense_mask(model.config._attn_implementation)


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


def _padding(rows, max_length):
    return 1 - sum(r.length for r in rows) / (len(rows) * max_length)


def test_best_fit_packing_wastes_less_and_keeps_every_document_once(tokenizer):
    docs = _documents(tokenizer, 300)
    greedy = list(pack_documents(docs, max_length=256))
    best = list(pack_best_fit(docs, max_length=256, window=300))
    assert sorted(d.position for r in best for d in r.documents) == [d.position for d in docs]
    assert all(r.length <= 256 for r in best)
    assert _padding(best, 256) < _padding(greedy, 256) / 2, (_padding(best, 256), _padding(greedy, 256))


def test_best_fit_at_phi2_length_wastes_under_one_percent(tokenizer):
    """The sample's 302 records are ~7 rows of 2048 tokens per epoch: windows end at each epoch, and the
    next epoch's records top up their gaps, so small epochs do not leave half-empty rows."""
    def padding(window):
        data = RankData(DataConfig(path=str(SAMPLE), max_length=2048, eval_fraction=0.0, pack_window=window),
                        tokenizer, seed=1, rank=0, world_size=1)
        return _padding(list(itertools.islice(data.rows("train"), 200)), 2048)

    best, greedy = padding(1024), padding(0)
    assert best < 0.01 and best < greedy, (best, greedy)


def test_resuming_from_any_row_of_a_best_fit_window_gives_the_same_rows(tokenizer):
    """The stream is re-read from the row's resume position: the rest must be the same rows, exactly."""
    data = RankData(DataConfig(path=str(SAMPLE), max_length=256, eval_fraction=0.0, pack_window=40), tokenizer,
                    seed=3, rank=1, world_size=2)
    rows = list(itertools.islice(data.rows("train", epochs=None), 80))  # 2.6 epochs of this rank's share
    ids = [[d.record.id for d in r.documents] for r in rows]
    assert any(r.resume.packed_rows for r in rows) and any(not r.resume.packed_rows for r in rows)
    for k, row in enumerate(rows[:-1]):
        rest = itertools.islice(data.rows("train", start=row.resume, epochs=None), len(ids) - k - 1)
        assert [[d.record.id for d in r.documents] for r in rest] == ids[k + 1 :], f"resume after row {k} ({row.resume})"


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


def test_eos_loss_and_bits_per_byte_match_a_hand_computation(model, tokenizer):
    """Per record, the loss on its end-of-sequence token (packed, with the chunked head too) equals
    -log p(EOS) from the document's own logits; bits per byte per language equals the summed token
    loss / (ln 2 x the answers' UTF-8 bytes), across languages whose tokens hold different numbers of bytes."""
    import math

    from bonsai.model.loss import breakdown_metrics, breakdown_sums

    docs = _documents(tokenizer, 6)
    packed = collate([Row(docs[:3]), Row(docs[3:])], tokenizer.pad_token_id, pad_to=max(
        sum(len(d) for d in docs[:3]), sum(len(d) for d in docs[3:])) + 5)
    with torch.no_grad():
        out = forward_loss(model, packed)
        by_hand = []
        for doc in docs:
            ids = torch.tensor([doc.encoded.input_ids])
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            assert doc.encoded.labels[-1] == tokenizer.eos_token_id
            by_hand.append(-torch.log_softmax(logits[-2], dim=-1)[tokenizer.eos_token_id])
    torch.testing.assert_close(out.record_eos_loss, torch.stack(by_hand), rtol=1e-4, atol=1e-4)

    records = [d.record for d in docs]
    sums = breakdown_sums(records, out.record_loss_sum, out.record_tokens).tolist()
    metrics = breakdown_metrics("loss", sums, "bpb")
    losses = out.record_loss_sum.tolist()
    for lang in {r.lang for r in records}:
        mine = [i for i, r in enumerate(records) if r.lang == lang]
        expected = sum(losses[i] for i in mine) / (math.log(2) * sum(len(records[i].output.encode()) for i in mine))
        assert metrics[f"bpb_by_language/{lang}"] == pytest.approx(expected, rel=1e-6)
    assert len({r.lang for r in records}) > 1
    total = sum(losses) / (math.log(2) * sum(len(r.output.encode()) for r in records))
    assert metrics["bpb"] == pytest.approx(total, rel=1e-6) and metrics["loss"] == pytest.approx(
        sum(losses) / out.record_tokens.sum().item(), rel=1e-6)


def test_the_loss_is_chunked_only_where_whole_logits_would_be_large():
    from bonsai.config import ModelConfig
    from bonsai.model.loading import loss_chunk_tokens

    cfg = ModelConfig(name_or_path="tiny-phi", loss_chunk_tokens=256)
    assert loss_chunk_tokens(cfg, 2048, 8 * 256) == 0  # 16 MiB of logits: whole rows
    assert loss_chunk_tokens(cfg, 51200, 2048) == 256  # Phi-2, one 2048-token row: 400 MiB, chunked
    assert loss_chunk_tokens(cfg, 2048, None) == 256  # no batch size given (eval, export): as configured
    always = cfg.model_copy(update={"loss_chunk_above_mib": 0})
    assert loss_chunk_tokens(always, 2048, 8 * 256) == 256
    never = cfg.model_copy(update={"loss_chunk_tokens": 0})
    assert loss_chunk_tokens(never, 51200, 2048) == 0
