"""bonsai data audit / convert / shard / publish."""

import json
import shutil
import subprocess
import sys

import pytest

from bonsai.data.audit import audit
from bonsai.config import DataConfig
from bonsai.data.dataset import RankData, read_valid_records
from bonsai.data.tools import ConvertError, convert, publish, shard
from bonsai.data.stream import ManifestMismatch
from bonsai.data.stream import StreamPosition
from conftest import ROOT, SAMPLE, sample_records, subprocess_env, write_shards


def _planted_audit_set(tmp_path):
    clean = sample_records()
    by_id = {r["id"]: r for r in clean}
    creative = by_id["creative-04-en"]
    planted = {
        "exact_duplicate": {**by_id["capital-03-en"], "id": "p-exact"},
        "near_duplicate": {**creative, "id": "p-near", "output": creative["output"].replace("yawns", "yawned")},
        "contradiction": {**by_id["openqa-00-en"], "id": "p-contra", "output": "Mount Takao is the highest."},
        "duplicate_id": {**by_id["capital-04-ja"], "id": "capital-00-en", "output": "スペインの首都はバルセロナです。"},
        "translation_disagreement": {**by_id["translate-02-ja2en"], "id": "p-trans", "output": "Where is the hotel?"},
        "language_mismatch": {**by_id["capital-05-ja"], "id": "p-lang", "output": "The capital is London."},
        "short_output": {**by_id["brainstorm-02-en"], "id": "p-short", "instruction": "Brainstorm names for a cat.",
                         "output": "Tama"},
    }
    data = write_shards(tmp_path / "data", clean + list(planted.values()))
    with (data / "part-00001.jsonl").open("a") as f:
        f.write('{"id": "broken", "instruction": \n')
    return data, planted


def test_audit_finds_each_planted_problem_and_nothing_clean(tmp_path):
    data, planted = _planted_audit_set(tmp_path)
    report = audit([str(data)])
    kinds = {f.kind for f in report.findings}
    assert kinds >= set(planted) | {"schema"}
    planted_ids = {r["id"] for r in planted.values()}
    for kind, record in planted.items():
        assert any(record["id"] in f.ids for f in report.findings if f.kind == kind), kind
    for f in report.findings:
        if f.kind == "schema":
            assert f.where == [f"{data / 'part-00001.jsonl'}:{len((data / 'part-00001.jsonl').read_text().splitlines())}"]
            continue
        assert set(f.ids) & planted_ids, f"finding on clean records only: {f}"
    assert report.worst() == "error"


def test_audit_of_the_clean_sample_finds_nothing(tokenizer):
    report = audit([str(SAMPLE)], tokenizer=tokenizer, max_length=256)
    assert report.findings == [] and report.records == 302
    assert sum(sum(v.values()) for v in report.counts.values()) == 302


def test_audit_cli_exit_code_and_outputs(tmp_path):
    data, _ = _planted_audit_set(tmp_path)
    run = lambda *extra: subprocess.run([sys.executable, "-m", "bonsai.cli", "data", "audit", str(data), "--out",
                                         str(tmp_path / "out"), *extra], capture_output=True, text=True, timeout=120,
                                        cwd=ROOT, env=subprocess_env())
    failing = run()
    assert failing.returncode == 1 and "error: contradiction: " in failing.stdout
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert report["summary"]["language_mismatch"] == 1 and report["records"] == 310
    assert (tmp_path / "out" / "audit.png").stat().st_size > 10_000
    assert run("--fail-on", "never").returncode == 0


def test_convert_alpaca_dolly_and_parquet(tmp_path):
    alpaca = [{"instruction": "日本で一番高い山は？", "input": "", "output": "富士山です。"},
              {"instruction": "Name a color.", "input": "", "output": "Blue."}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca, ensure_ascii=False))
    n = convert([str(tmp_path / "alpaca.json")], tmp_path / "a.jsonl", "alpaca", {}, "open_qa", None, "alp")
    out = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert n == 2 and [r["lang"] for r in out] == ["ja", "en"] and all(r["id"].startswith("alp-") for r in out)
    # ids depend on content only: the same records in another order get the same ids
    (tmp_path / "alpaca_rev.json").write_text(json.dumps(alpaca[::-1], ensure_ascii=False))
    convert([str(tmp_path / "alpaca_rev.json")], tmp_path / "b.jsonl", "alpaca", {}, "open_qa", None, "alp")
    assert sorted(r["id"] for r in map(json.loads, (tmp_path / "b.jsonl").read_text().splitlines())) == \
        sorted(r["id"] for r in out)
    with pytest.raises(ConvertError, match="give --category"):
        convert([str(tmp_path / "alpaca.json")], tmp_path / "c.jsonl", "alpaca", {}, None, None, "alp")

    dolly = [{"instruction": "Write a poem about rain.", "context": "", "response": "Rain taps the roof.",
              "category": "creative_writing"},
             {"instruction": "Who wrote it?", "context": "Soseki wrote Kokoro.", "response": "Soseki.",
              "category": "information_extraction"},
             {"instruction": "Tell a joke.", "context": "", "response": "No.", "category": "humor"}]
    (tmp_path / "dolly.jsonl").write_text("\n".join(json.dumps(r) for r in dolly))
    with pytest.raises(ConvertError, match=r"dolly.jsonl:3: category 'humor'.*--category-map humor="):
        convert([str(tmp_path / "dolly.jsonl")], tmp_path / "d.jsonl", "dolly", {}, None, None, "dolly")
    convert([str(tmp_path / "dolly.jsonl")], tmp_path / "d.jsonl", "dolly", {"humor": "creative"}, None, None, "dolly")
    converted = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["category"] for r in converted] == ["creative", "closed_qa", "creative"]
    assert converted[1]["input"] == "Soseki wrote Kokoro."

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(dolly[:2]), tmp_path / "dolly.parquet")
    assert convert([str(tmp_path / "dolly.parquet")], tmp_path / "e.jsonl", "dolly", {}, None, None, "dolly") == 2
    assert len(read_valid_records(str(tmp_path / "e.jsonl"))) == 2  # training reads what convert writes


def test_convert_chat_messages_and_sharegpt(tmp_path):
    """One user turn and its answer become a record; a system message only with --drop-system; anything
    else (more turns, unknown roles, wrong shapes) is refused with file:line and what was expected."""
    messages = [
        {"messages": [{"role": "user", "content": "日本で一番高い山は？"}, {"role": "assistant", "content": "富士山です。"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
                      {"role": "assistant", "content": "Blue."}], "category": "brainstorming"},
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in messages))
    with pytest.raises(ConvertError, match=r"chat.jsonl:2: field 'messages': turns are system -> user -> assistant.*"
                                           r"--drop-system"):
        convert([str(tmp_path / "chat.jsonl")], tmp_path / "a.jsonl", "messages", {}, "open_qa", None, "chat")
    assert convert([str(tmp_path / "chat.jsonl")], tmp_path / "a.jsonl", "messages", {}, "open_qa", None, "chat",
                   drop_system=True) == 2
    out = read_valid_records(str(tmp_path / "a.jsonl"))  # training reads what convert writes
    assert [(r.instruction, r.input, r.output, r.category, r.lang) for r in out] == [
        ("日本で一番高い山は？", "", "富士山です。", "open_qa", "ja"), ("Name a color.", "", "Blue.", "brainstorming", "en")]

    sharegpt = [{"conversations": [{"from": "human", "value": "你好吗？"}, {"from": "gpt", "value": "我很好。"}]},
                {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                                   {"from": "human", "value": "And?"}, {"from": "gpt", "value": "That is all."}]}]
    (tmp_path / "sg.json").write_text(json.dumps(sharegpt, ensure_ascii=False))
    with pytest.raises(ConvertError, match=r"sg.json:2: .*user -> assistant -> user -> assistant, expected user -> "
                                           r"assistant; a record is one question"):
        convert([str(tmp_path / "sg.json")], tmp_path / "b.jsonl", "sharegpt", {}, "open_qa", None, "sg")
    (tmp_path / "sg.json").write_text(json.dumps(sharegpt[:1], ensure_ascii=False))
    convert([str(tmp_path / "sg.json")], tmp_path / "b.jsonl", "sharegpt", {}, "open_qa", None, "sg")
    assert [(r.output, r.lang) for r in read_valid_records(str(tmp_path / "b.jsonl"))] == [("我很好。", "zh")]

    for bad, expected in [({"conversations": "hi"}, r"field 'conversations': expected a list of turns"),
                          ({"conversations": [{"from": "bot", "value": "x"}]}, r"turn 1: expected \{'from': one of"),
                          ({"messages": []}, "wrong"), ]:
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad))
        fmt = "messages" if "messages" in bad else "sharegpt"
        match = r"bad.jsonl:1: field 'messages': expected a list" if expected == "wrong" else r"bad.jsonl:1: .*" + expected
        with pytest.raises(ConvertError, match=match):
            convert([str(tmp_path / "bad.jsonl")], tmp_path / "c.jsonl", fmt, {}, "open_qa", None, "x")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_shard_writes_balanced_shards_and_training_verifies_the_manifest(tmp_path, tokenizer, fmt):
    manifest = shard([str(SAMPLE)], tmp_path / "shards", 4, fmt)
    assert [e["records"] for e in manifest["shards"]] == [76, 76, 75, 75] and manifest["records"] == 302
    cfg = DataConfig(path=str(tmp_path / "shards"), max_length=256, eval_fraction=0.0)
    data = RankData(cfg, tokenizer, seed=0, rank=0, world_size=1)
    assert len(data.shards) == 4  # manifest.json is not read as a shard
    assert len(list(data.documents("train", StreamPosition(), 1))) == 302

    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE, broken)
    with (broken / "part-00001.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"id": "b", "instruction": "x"}\n')
    with pytest.raises(ConvertError, match=r"1 bad record\(s\):\n  .*part-00001.jsonl:\d+: field 'output'"):
        shard([str(broken)], tmp_path / "not-written", 4, fmt)  # never dropped silently
    assert not (tmp_path / "not-written").exists()

    victim = tmp_path / "shards" / f"part-00002.{fmt}"
    victim.write_bytes(victim.read_bytes()[:-20])  # a partly copied shard
    with pytest.raises(ManifestMismatch, match=rf"part-00002.{fmt}: sha256 differs"):
        RankData(cfg, tokenizer, seed=0, rank=0, world_size=1)
    victim.unlink()
    with pytest.raises(ManifestMismatch, match=rf"part-00002.{fmt} is in manifest.json but missing"):
        RankData(cfg, tokenizer, seed=0, rank=0, world_size=1)


def test_publish_writes_a_loadable_dataset_with_a_card(tmp_path, monkeypatch):
    import datasets

    monkeypatch.delenv("HF_TOKEN", raising=False)
    message = publish(str(SAMPLE), tmp_path / "pub", "bonsai-sample", "cc-by-4.0", "someone/bonsai-sample")
    assert "not pushed: set HF_TOKEN" in message
    ds = datasets.load_dataset(str(tmp_path / "pub"), split="train")
    assert ds.num_rows == 302
    assert set(ds.column_names) == {"id", "instruction", "input", "output", "category", "lang", "source_lang"}
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "| translation | 30 | 30 | 20 |" in card
