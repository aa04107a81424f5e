"""data.exclude: which ids a file lists, what a scan leaves out and keeps in place, and errors that name
the file and line."""

from __future__ import annotations

import json

import pytest

from bonsai.config import DataConfig
from bonsai.data.dataset import RankData
from bonsai.data.exclude import read_exclusions
from bonsai.data.scan_cache import settings_fingerprint
from bonsai.data.stream import DataSourceError, StreamPosition
from conftest import sample_records, write_shards


def test_an_exclusion_file_is_excluded_jsonl_or_one_id_per_line(tmp_path):
    rows = tmp_path / "excluded.jsonl"
    rows.write_text('{"id": "a", "where": "x.jsonl:3", "reasons": "r", "score": 6.0}\n\n{"id": "b c"}\n')
    assert read_exclusions(str(rows)) == {"a", "b c"}
    plain = tmp_path / "ids.txt"
    plain.write_text("first id\n  second\n\n")
    assert read_exclusions(str(plain)) == {"first id", "second"}


@pytest.mark.parametrize("content, expected", [
    ('{"id": "a"}\n{"id": 3}\n', r"bad\.jsonl:2: expected a non-empty string \"id\", got 3"),
    ('{"id": "a"}\n{"id": "b",\n', r"bad\.jsonl:2: not valid JSON"),
])
def test_a_bad_exclusion_line_names_file_and_line(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataSourceError, match=expected):
        read_exclusions(str(path))
    with pytest.raises(DataSourceError, match="no such file"):
        read_exclusions(str(tmp_path / "missing.jsonl"))


def test_excluded_records_are_neither_trained_nor_evaluated_and_keep_their_place(tmp_path, tokenizer):
    records = sample_records()
    data = write_shards(tmp_path / "data", records)
    chosen = {r["id"] for r in records[::7]}
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in sorted(chosen)))

    def rank_data(exclude=None):
        cfg = DataConfig(path=str(data), max_length=256, eval_fraction=0.1, exclude=exclude)
        return RankData(cfg, tokenizer, seed=0, rank=0, world_size=1)

    plain, excluding = rank_data(), rank_data(str(tmp_path / "x.jsonl"))
    full, scanned = plain.scan(), excluding.scan()
    assert sorted(scanned.excluded) == sorted(chosen) and scanned.items == full.items == len(records)
    assert scanned.train_records + scanned.eval_records == full.train_records + full.eval_records - len(chosen)
    for split in ("train", "eval"):
        before = list(plain.documents(split, StreamPosition(), epochs=1))
        after = list(excluding.documents(split, StreamPosition(), epochs=1))
        # The same documents in the same order, at the same stream positions, less the excluded.
        assert [(d.record.id, d.position) for d in before if d.record.id not in chosen] == \
               [(d.record.id, d.position) for d in after]
        assert not chosen & {d.record.id for d in after}
    # A scan cached without the exclusions is not reused with them.
    assert settings_fingerprint(tokenizer, plain.cfg) != settings_fingerprint(tokenizer, excluding.cfg, excluding.excluded)

