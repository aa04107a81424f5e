"""Streaming: every rank reads a disjoint part; together they cover the data; positions resume exactly."""

import json

import fsspec
import pytest

from bonsai.config import DataConfig
from bonsai.data.dataset import RankData
from bonsai.data.records import in_eval_split
from bonsai.data.stream import DataSourceError, StreamPosition, list_shards
from conftest import SAMPLE, sample_records


def _data(tokenizer, rank, world, **kw):
    cfg = DataConfig(path=kw.pop("path", str(SAMPLE)), max_length=256, **kw)
    return RankData(cfg, tokenizer, seed=3, rank=rank, world_size=world)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_are_disjoint_and_complete(tokenizer, world):
    all_ids = {r["id"] for r in sample_records()}
    per_rank = {}
    for split in ("train", "eval"):
        per_rank[split] = [
            [d.record.id for d in _data(tokenizer, rank, world, eval_fraction=0.1).documents(split, StreamPosition(), 1)]
            for rank in range(world)
        ]
    seen = [i for split in per_rank.values() for ids in split for i in ids]
    assert len(seen) == len(set(seen)), "a record reached two ranks or two splits"
    assert set(seen) == all_ids, "a record was dropped"
    assert {i for ids in per_rank["eval"] for i in ids} == {i for i in all_ids if in_eval_split(i, 0.1)}
    # Without an eval split, ranks get equal shares (to within one record).
    sizes = [len(list(_data(tokenizer, r, world, eval_fraction=0.0).documents("train", StreamPosition(), 1)))
             for r in range(world)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(all_ids)


def test_epochs_reshuffle_and_positions_resume_exactly(tokenizer):
    data = _data(tokenizer, 1, 2, eval_fraction=0.0, shuffle_window=16)
    stream = data.documents("train", StreamPosition(), epochs=2)
    docs = list(stream)
    epoch0 = [d.record.id for d in docs if d.position.epoch == 0]
    epoch1 = [d.record.id for d in docs if d.position.epoch == 1]
    assert epoch0 != epoch1  # a new order (and a new share for this rank) each epoch
    for k in (0, 5, len(epoch0) - 1, len(epoch0), len(docs) - 3):
        resumed = list(data.documents("train", docs[k].position, epochs=2 - docs[k].position.epoch))
        assert [d.record.id for d in resumed] == [d.record.id for d in docs[k:]]


def test_packed_rows_resume_exactly(tokenizer):
    data = _data(tokenizer, 0, 1, eval_fraction=0.05)
    rows = data.rows("train", epochs=1)
    first = [next(rows) for _ in range(6)]
    rest = [next(rows) for _ in range(4)]
    resumed = data.rows("train", start=first[-1].resume, epochs=1)
    again = [next(resumed) for _ in range(4)]
    assert [[d.record.id for d in r.documents] for r in again] == [[d.record.id for d in r.documents] for r in rest]


def test_paths_globs_and_fsspec_urls(tmp_path, tokenizer):
    assert len(list_shards(str(SAMPLE))) == 3
    assert len(list_shards(str(SAMPLE / "part-0000[01].jsonl"))) == 2
    assert len(list_shards(f"file://{SAMPLE}/part-00000.jsonl")) == 1
    with pytest.raises(DataSourceError, match="no such file"):
        list_shards(str(tmp_path / "missing"))
    fs = fsspec.filesystem("memory")
    records = sample_records()[:20]
    fs.pipe("/bonsai-test/a.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode())
    data = _data(tokenizer, 0, 1, path="memory://bonsai-test", eval_fraction=0.0)
    assert sorted(d.record.id for d in data.documents("train", StreamPosition(), 1)) == sorted(r["id"] for r in records)


def test_parquet_shards(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sample_records()[:30]
    for r in records:
        r.setdefault("source_lang", None)
    pq.write_table(pa.Table.from_pylist(records[:15]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(records[15:]), tmp_path / "b.parquet")
    data = _data(tokenizer, 0, 1, path=str(tmp_path), eval_fraction=0.0)
    docs = list(data.documents("train", StreamPosition(), 1))
    assert sorted(d.record.id for d in docs) == sorted(r["id"] for r in records)
    assert {d.where.path.rsplit("/", 1)[-1] for d in docs} == {"a.parquet", "b.parquet"}
