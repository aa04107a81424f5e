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


def _shards_with_blank_lines_and_parquet(directory):
    """Three JSONL shards (with blank lines between records) and a Parquet shard of 50-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"id": f"r{i}", "instruction": f"q{i}", "input": "", "output": "a", "category": "open_qa",
                "lang": "en"} for i in range(700)]
    for s in range(3):
        (directory / f"p{s}.jsonl").write_text("\n\n".join(json.dumps(r) for r in records[s:500:3]) + "\n")
    pq.write_table(pa.Table.from_pylist(records[500:]), directory / "p9.parquet", row_group_size=50)
    return list_shards(str(directory))


def _walk(shards, start, rank, world, window, layouts=None):
    from bonsai.data.stream import rank_items

    return [(p.epoch, p.taken, w.path, w.line, p.seek)
            for p, w, _ in rank_items(shards, seed=3, window=window, rank=rank, world_size=world, start=start,
                                      epochs=2 - start.epoch, layouts=layouts)]


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("window", [1, 64])
def test_a_resume_seeks_to_its_window_and_reads_the_same_items(tmp_path, world, window):
    """A position carries where its shuffle window starts (shard, byte offset or Parquet row, line): a
    resume reads from there, not from the epoch's start, and yields exactly what an uninterrupted read
    yields after that position, also after a resize's layout and from a row's `next()` position."""
    from bonsai.data.elastic import EpochLayout

    shards = _shards_with_blank_lines_and_parquet(tmp_path)
    for layouts in (None, {0: EpochLayout(100, (105, 130, 131))}):
        for rank in range(world):
            full = _walk(shards, StreamPosition(), rank, world, window, layouts)
            for cut in (1, 7, len(full) // 2, len(full) - 2):
                epoch, taken, *_, seek = full[cut]
                assert seek is not None
                for start, expected in ((StreamPosition(epoch, taken, seek=seek), full[cut:]),
                                        (StreamPosition(epoch, taken, seek=seek).next(), full[cut + 1:])):
                    resumed = _walk(shards, StreamPosition.from_dict(start.to_dict()), rank, world, window, layouts)
                    assert [r[:4] for r in resumed] == [r[:4] for r in expected], (layouts, rank, cut)
            # the later the position, the later the reading starts: no bytes before its window are read
            late = full[-2][4]
            assert late.window * window > 700 // 2 and (late.offset > 0 or late.order > 0)  # 700 items an epoch


def test_a_seek_for_other_data_is_not_used(tmp_path):
    from bonsai.data.stream import Seek

    shards = _shards_with_blank_lines_and_parquet(tmp_path)
    full = _walk(shards, StreamPosition(), 0, 1, 8)
    stale = StreamPosition(0, 40, seek=Seek(window=5, order=0, shard="file:///elsewhere/p0.jsonl", offset=999, line=9))
    assert [r[:4] for r in _walk(shards, stale, 0, 1, 8)] == [r[:4] for r in full[40:]]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("window", [1, 5, 64])
def test_with_line_indexes_a_rank_reads_only_its_records_and_gets_the_same_stream(tmp_path, monkeypatch, world,
                                                                                  window):
    """The indexed stream gives every rank exactly what reading every line gives it (positions, seek
    hints, places, bytes), from the start, from a resume and after a resize's layout, while the bytes it
    reads are those of its own records: ~ data / ranks."""
    from bonsai.data.elastic import EpochLayout
    from bonsai.data.line_index import RecordReader
    from bonsai.data.stream import index_shard, rank_items

    monkeypatch.setattr(RecordReader, "OPEN_SHARDS", 2)  # fewer than the shards: closed and reopened as it goes
    for s in range(4):  # blank lines between records, one shard much larger than the others
        records = [json.dumps({"id": f"s{s}-{i}", "x": "y" * (i % 7)}) for i in range(40 if s else 230)]
        (tmp_path / f"p{s}.jsonl").write_text("\n\n".join(records) + "\n")
    shards = list_shards(str(tmp_path))
    indexes = {url: index_shard(url) for url in shards}

    def walk(start, rank, layouts, indexed):
        items = rank_items(shards, seed=3, window=window, rank=rank, world_size=world, start=start, epochs=2 - start.epoch,
                           layouts=layouts, indexes=indexes if indexed else None)
        return [(p, p.seek, w, raw.data, raw.offset) for p, w, raw in items]

    for layouts in (None, {0: EpochLayout(50, (52, 60, 61))}):
        for rank in range(world):
            full = walk(StreamPosition(), rank, layouts, indexed=False)
            assert walk(StreamPosition(), rank, layouts, indexed=True) == full
            for cut in (1, len(full) // 2, len(full) - 2):
                start = full[cut][0]
                assert walk(start, rank, layouts, indexed=True) == full[cut:], (layouts, rank, cut)
    data = sum((tmp_path / f"p{s}.jsonl").stat().st_size for s in range(4))

    def bytes_per_epoch(indexed: bool) -> float:  # the kernel's count of the bytes this process read
        before = _bytes_read()
        walk(StreamPosition(), 0, None, indexed)
        return (_bytes_read() - before) / 2

    assert bytes_per_epoch(indexed=True) <= 1.1 * data / world
    assert bytes_per_epoch(indexed=False) >= data  # without indexes every rank reads every byte


def _bytes_read() -> int:
    with open("/proc/self/io") as io:
        return int(io.read().split("rchar: ")[1].split()[0])


def test_parquet_beside_jsonl_is_read_line_by_line_after_a_scan(tmp_path, tokenizer):
    """A Parquet shard has no line index: after the scan (fewer shards than ranks: every rank scans
    every shard) the ranks read every line, and still share the records out between them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sample_records()
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:150]),
                                      encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(records[150:]), tmp_path / "b.parquet", row_group_size=40)
    ids = []
    for rank in range(3):
        data = _data(tokenizer, rank, 3, path=str(tmp_path), eval_fraction=0.0)
        data.scan()  # the stream is read before and after the indexes are settled
        mine = [d.record.id for d in data.documents("train", StreamPosition(), 1)]
        assert data.load_indexes(None) is False
        assert "1 Parquet shard(s) have no line index" in data.unindexed_reason()  # said in the log
        assert [d.record.id for d in data.documents("train", StreamPosition(), 1)] == mine
        ids += mine
    assert sorted(ids) == sorted(r["id"] for r in records)
