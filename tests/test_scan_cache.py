"""The start-up scan's cache: a relaunch reads only the shards that changed, and finds what a full scan finds."""

from __future__ import annotations

import json

import pytest

from bonsai.config import DataConfig
from bonsai.data.dataset import RankData
from bonsai.data.scan_cache import ScanCache, ScanReport, settings_fingerprint
from conftest import sample_records, write_shards


def _scan(path, tokenizer, cache_dir, rank=0, world=1, **data):
    cfg = DataConfig(**{"path": str(path), "max_length": 256, "eval_fraction": 0.05, "on_bad_record": "skip", **data})
    ranked = RankData(cfg, tokenizer, seed=0, rank=rank, world_size=world)
    cache = ScanCache(cache_dir, settings_fingerprint(tokenizer, cfg), rank, world)
    report = ranked.scan(cache)
    return report, (cache.hits, cache.misses), ranked.scan()


def _summary(report):
    return (report.train_records, report.eval_records, report.train_target_tokens,
            [b.as_quarantine_row() for b in report.bad])


def test_a_relaunch_reads_only_changed_shards_and_finds_the_same(tmp_path, tokenizer):
    data = write_shards(tmp_path / "data", sample_records(), shards=4)
    with (data / "part-00001.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"id": "broken", "instruction": 3}\n')
    first, counts, full = _scan(data, tokenizer, tmp_path / "cache")
    assert counts == (0, 4) and _summary(first) == _summary(full) and len(first.bad) == 1

    again, counts, _ = _scan(data, tokenizer, tmp_path / "cache")
    assert counts == (4, 0) and _summary(again) == _summary(first)
    assert str(again.bad[0]) == str(first.bad[0])  # file, line, field and reason survive the cache

    record = {**sample_records()[0], "id": "added-later"}
    with (data / "part-00002.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    changed, counts, full = _scan(data, tokenizer, tmp_path / "cache")
    assert counts == (3, 1) and _summary(changed) == _summary(full)
    assert changed.items == first.items + 1


def test_other_settings_or_ranks_do_not_reuse_an_entry(tmp_path, tokenizer):
    data = write_shards(tmp_path / "data", sample_records(), shards=2)
    _scan(data, tokenizer, tmp_path / "cache")
    assert _scan(data, tokenizer, tmp_path / "cache", max_length=128)[1] == (0, 2)
    parts = [_scan(data, tokenizer, tmp_path / "cache", rank=r, world=2) for r in range(2)]
    assert [p[1] for p in parts] == [(0, 1), (0, 1)]  # as many shards as ranks: each scans the one it owns
    assert sum(p[0].items for p in parts) == _scan(data, tokenizer, tmp_path / "cache")[0].items


def test_a_torn_entry_is_scanned_again(tmp_path, tokenizer):
    data = write_shards(tmp_path / "data", sample_records(), shards=2)
    first = _scan(data, tokenizer, tmp_path / "cache")[0]
    for entry in (tmp_path / "cache").glob("*.json"):
        entry.write_text(entry.read_text()[:20])
    again, counts, _ = _scan(data, tokenizer, tmp_path / "cache")
    assert counts == (0, 2) and _summary(again) == _summary(first)


def test_line_indexes_are_kept_by_content_for_any_world_size(tmp_path, tokenizer):
    """Each JSONL shard's line index is built by the first scan, found by a relaunch on another number
    of processes without reading the shard again, and rebuilt for a shard that changed."""
    from bonsai.data.line_index import LineIndex
    from bonsai.data.stream import index_shard, list_shards

    data = write_shards(tmp_path / "data", sample_records(), shards=3)
    cfg = DataConfig(path=str(data), max_length=256, eval_fraction=0.05, on_bad_record="skip")

    def scan(world):  # every rank's scan, then every rank's indexes (as the trainer does, after its gather)
        ranks = [(RankData(cfg, tokenizer, seed=0, rank=r, world_size=world),
                  ScanCache(tmp_path / "cache", settings_fingerprint(tokenizer, cfg), r, world)) for r in range(world)]
        for ranked, cache in ranks:
            ranked.scan(cache)
        assert all(ranked.load_indexes(cache) for ranked, cache in ranks)
        assert all(ranked.indexes == ranks[0][0].indexes for ranked, _ in ranks)
        return ranks[0][0].indexes

    first = scan(2)
    files = sorted((tmp_path / "cache").glob("*.index"))
    assert len(files) == 3 and all(LineIndex.load(f) is not None for f in files)
    written = [f.stat().st_mtime_ns for f in files]
    again = scan(3)
    assert [f.stat().st_mtime_ns for f in files] == written  # found, not rebuilt
    for url in list_shards(str(data)):
        assert again[url] == first[url] == index_shard(url) and len(first[url]) > 0
    with (data / "part-00001.jsonl").open("a", encoding="utf-8") as f:
        f.write("\n" + json.dumps({**sample_records()[0], "id": "added"}, ensure_ascii=False) + "\n")
    changed = scan(2)
    url = next(u for u in changed if u.endswith("part-00001.jsonl"))
    assert changed[url] == index_shard(url) != first[url] and len(changed[url]) == len(first[url]) + 1
    torn = sorted((tmp_path / "cache").glob("*.index"))[0]
    torn.write_bytes(torn.read_bytes()[:-5])  # a crash mid-write
    assert LineIndex.load(torn) is None and scan(2) == changed


def test_with_as_many_shards_as_ranks_each_rank_scans_only_the_shards_it_owns(tmp_path, tokenizer):
    """Each rank scans whole shards, balanced by size (bytes read ~ data / ranks on a first launch);
    together the ranks find what one process finds, bad records at their file and line, and every rank
    then finds every shard's line index in the cache."""
    from bonsai.data.dataset import scan_owners
    from bonsai.data.stream import index_shard, list_shards

    data = write_shards(tmp_path / "data", sample_records(), shards=4)
    with (data / "part-00002.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"id": "broken", "instruction": 3}\n')
    cfg = DataConfig(path=str(data), max_length=256, eval_fraction=0.05, on_bad_record="skip")
    shards = list_shards(str(data))
    owners = scan_owners(shards, 2)
    assert sorted(set(owners)) == [0, 1] and owners == scan_owners(shards, 2)
    whole, ranks, read = RankData(cfg, tokenizer, seed=0, rank=0, world_size=1).scan(), [], []
    for rank in range(2):
        ranked = RankData(cfg, tokenizer, seed=0, rank=rank, world_size=2)
        cache = ScanCache(tmp_path / "cache", settings_fingerprint(tokenizer, cfg), rank, 2)
        before = _bytes_read()
        ranks.append((ranked, cache, ranked.scan(cache)))
        read.append(_bytes_read() - before)
    for rank, owned in enumerate(read):
        mine = sum((data / u.rsplit("/", 1)[-1]).stat().st_size for u, o in zip(shards, owners) if o == rank)
        assert owned <= mine + 4 * (1 << 16), (rank, owned, mine)  # its shards, and their 64 KiB identity prefixes
    together = ScanReport()
    for _, _, part in ranks:
        together.add(part)
    assert _summary(together) == _summary(whole) and "part-00002.jsonl:" in str(together.bad[0])
    for ranked, cache, _ in ranks:
        assert ranked.load_indexes(cache) and all(ranked.indexes[u] == index_shard(u) for u in shards)


def _bytes_read() -> int:
    with open("/proc/self/io") as io:
        return int(io.read().split("rchar: ")[1].split()[0])


def _one_file_with_bad_and_blank_lines(path, records):
    """One JSONL file: records, blank lines, a line of spaces, bad records (one with a long line) and
    no newline at the end, so that piece boundaries fall inside lines of every kind."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for at in (3, 50, 51, 120, 200):
        lines.insert(at, "")
    lines.insert(77, "   ")
    lines.insert(90, '{"id": "broken", "instruction": 3}')
    lines.insert(150, '{"id": "long", "instruction": "' + "x" * 5000)
    lines.insert(260, "not json")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("world", [2, 3, 4])
def test_fewer_shards_than_ranks_each_rank_scans_a_piece(tmp_path, tokenizer, world):
    """One file on several ranks: each rank scans its byte range of it (bytes read ~ data / ranks);
    together, once the gathered line counts number the pieces' lines, they find what one process
    finds (bad records at their lines), and every rank joins the pieces' line indexes into the file's,
    which a relaunch on another number of processes finds whole."""
    from bonsai.data.scan_cache import combine_reports
    from bonsai.data.stream import index_shard

    path = _one_file_with_bad_and_blank_lines(tmp_path / "all.jsonl", sample_records())
    cfg = DataConfig(path=str(path), max_length=256, eval_fraction=0.05, on_bad_record="skip")
    whole = RankData(cfg, tokenizer, seed=0, rank=0, world_size=1).scan()
    assert len(whole.bad) == 3
    ranks, reports, read = [], [], []
    for rank in range(world):
        ranked = RankData(cfg, tokenizer, seed=0, rank=rank, world_size=world)
        cache = ScanCache(tmp_path / "cache", settings_fingerprint(tokenizer, cfg), rank, world)
        before = _bytes_read()
        reports.append(ranked.scan(cache))
        read.append(_bytes_read() - before)
        ranks.append((ranked, cache))
    size = path.stat().st_size
    assert max(read) <= size / world + 5200 + 2 * (1 << 16), (read, size)  # + a line, the identity prefixes
    together, bases = combine_reports(reports)
    assert _summary(together) == _summary(whole)
    assert [str(b) for b in together.bad] == [str(b) for b in whole.bad]
    for ranked, cache in ranks:
        assert ranked.load_indexes(cache, bases) and ranked.indexes[str(path)] == index_shard(str(path))

    relaunch = RankData(cfg, tokenizer, seed=0, rank=0, world_size=world + 1)
    relaunch.scan(ScanCache(tmp_path / "cache", settings_fingerprint(tokenizer, cfg), 0, world + 1))
    assert relaunch.indexes[str(path)] == index_shard(str(path))  # kept whole: no piece of it needed


def test_a_parquet_file_on_more_ranks_is_scanned_by_rows(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sample_records()
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "all.parquet", row_group_size=25)
    cfg = DataConfig(path=str(tmp_path / "all.parquet"), max_length=256, eval_fraction=0.05, on_bad_record="skip")
    whole = RankData(cfg, tokenizer, seed=0, rank=0, world_size=1).scan()
    parts = [RankData(cfg, tokenizer, seed=0, rank=r, world_size=3).scan() for r in range(3)]
    assert [p.items for p in parts] == [len(records) * (r + 1) // 3 - len(records) * r // 3 for r in range(3)]
    together = ScanReport()
    for part in parts:
        together.add(part)
    assert _summary(together) == _summary(whole) and together.piece_lines == {}
