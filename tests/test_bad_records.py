"""Bad input: by policy, a clear error naming file, line and field, or a skip that is counted and
listed in the quarantine file. Never silent."""

import json

import pytest

from bonsai.config import DataConfig
from bonsai.data.dataset import RankData
from bonsai.data.records import BadRecord
from bonsai.data.stream import StreamPosition
from conftest import base_config, losses, run_train, sample_records, write_config

GOOD = {"id": "g", "instruction": "Say hi.", "input": "", "output": "Hi.", "category": "open_qa", "lang": "en"}
CASES = {
    "malformed_json": ('{"id": "bad", "instruction": "x",', "(line)", "malformed JSON"),
    "missing_field": (json.dumps({k: v for k, v in GOOD.items() if k != "output"}), "output", "missing required field"),
    "empty_field": (json.dumps({**GOOD, "instruction": "  "}), "instruction", "empty"),
    "unknown_category": (json.dumps({**GOOD, "category": "poetry"}), "category", "unknown category 'poetry'"),
    "unknown_language": (json.dumps({**GOOD, "lang": "fr"}), "lang", "unknown language 'fr'"),
    "translation_without_source": (json.dumps({**GOOD, "category": "translation"}), "source_lang", "missing"),
    "too_long": (json.dumps({**GOOD, "output": "word " * 400}), "(record)", "exceed data.max_length 256"),
    "not_an_object": ("[1, 2, 3]", "(line)", "expected a JSON object"),
}
BAD_LINE = 4  # 1-based line of the bad record in its shard


def _write_dataset(directory, bad_lines):
    directory.mkdir(parents=True, exist_ok=True)
    good = [json.dumps(r, ensure_ascii=False) for r in sample_records()[:60]]
    (directory / "a.jsonl").write_text("\n".join(good[:30]) + "\n", encoding="utf-8")
    lines = good[30:]
    for offset, bad in enumerate(bad_lines):
        lines.insert(BAD_LINE - 1 + offset, bad)
    (directory / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_each_bad_record_case_under_each_policy(tmp_path, tokenizer, case, policy):
    text, field, reason = CASES[case]
    path = _write_dataset(tmp_path / "data", [text])
    data = RankData(DataConfig(path=str(path), max_length=256, eval_fraction=0.0, on_bad_record=policy), tokenizer,
                    seed=0, rank=0, world_size=1)
    report = data.scan()
    assert len(report.bad) == 1 and report.train_records == 60
    bad = report.bad[0]
    assert (bad.where.path.endswith("b.jsonl"), bad.where.line, bad.field) == (True, BAD_LINE, field)
    assert reason in bad.reason
    assert f"b.jsonl:{BAD_LINE}: field '{field}'" in str(bad)
    row = bad.as_quarantine_row()
    assert row["line"] == BAD_LINE and row["field"] == field and row["raw"]

    docs = data.documents("train", StreamPosition(), epochs=1)
    if policy == "error":
        with pytest.raises(BadRecord, match=f"b.jsonl:{BAD_LINE}: field"):
            list(docs)
    else:
        assert len(list(docs)) == 60 and data.skipped == 1


def test_cli_error_policy_names_every_bad_record_and_trains_nothing(tmp_path, model_cache):
    data = _write_dataset(tmp_path / "data", [CASES["unknown_category"][0], CASES["malformed_json"][0]])
    cfg = base_config(tmp_path / "run", model_cache, data)
    proc = run_train(write_config(tmp_path / "c.yaml", cfg), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"b.jsonl:{BAD_LINE}: field 'category': unknown category 'poetry'" in proc.stderr
    assert f"b.jsonl:{BAD_LINE + 1}: field '(line)': malformed JSON" in proc.stderr
    assert "data.on_bad_record=skip" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_skip_policy_trains_and_quarantines(tmp_path, model_cache):
    data = _write_dataset(tmp_path / "data", [CASES["too_long"][0], CASES["missing_field"][0]])
    cfg = base_config(tmp_path / "run", model_cache, data)
    cfg["data"]["on_bad_record"] = "skip"
    cfg["train"].update(max_steps=2, warmup_steps=0)
    proc = run_train(write_config(tmp_path / "c.yaml", cfg))
    assert "2 bad (quarantined)" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rows] == [(BAD_LINE, "(record)"), (BAD_LINE + 1, "output")]
    assert len(losses(tmp_path / "run")) == 2


def test_two_processes_on_one_file_quarantine_each_bad_record_at_its_line(tmp_path, model_cache):
    """Fewer shards than ranks: each rank scans a byte range of the one file, numbering lines within it;
    after the gather, the quarantine gives every bad record its line in the file."""
    good = [json.dumps(r, ensure_ascii=False) for r in sample_records()[:80]]
    lines = good[:10] + [CASES["missing_field"][0], ""] + good[10:60] + [CASES["unknown_category"][0]] + good[60:]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "all.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = base_config(tmp_path / "run", model_cache, tmp_path / "data")
    cfg["data"]["on_bad_record"] = "skip"
    cfg["train"].update(max_steps=2, warmup_steps=0)
    proc = run_train(write_config(tmp_path / "c.yaml", cfg), nproc=2)
    assert "2 bad (quarantined)" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rows] == [(11, "output"), (63, "category")]
