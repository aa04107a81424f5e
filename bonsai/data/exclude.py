"""Records left out of training and eval by id (`data.exclude`), and `bonsai data clean`, which writes
the data without the suspects of a run's report.

An exclusion file is the `excluded.jsonl` that `bonsai data clean` writes (one JSON object with an "id"
per line, plus where the record was and why it was chosen), or plain text with one id per line.
Excluded records keep their place in the stream (a position counts them like any other item), so adding
an exclusion list to a fresh run changes nothing else about the order of the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

from bonsai.data.records import BadRecord, validate_record
from bonsai.data.stream import DataSourceError, list_shards, parse_payload, read_shard
from bonsai.io import write_jsonl

EXCLUDED_FILE = "excluded.jsonl"


def read_exclusions(path: str) -> frozenset[str]:
    """The ids listed in `path`. A line starting with "{" must be a JSON object with a string "id"
    (else an error naming the file and line); any other non-blank line is an id."""
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataSourceError(f"data.exclude {path}: no such file (an excluded.jsonl from `bonsai data clean`, "
                              "or one record id per line)") from None
    except UnicodeDecodeError as err:
        raise DataSourceError(f"data.exclude {path}: not UTF-8 ({err.reason})") from None
    ids = set()
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataSourceError(f"{path}:{line_no}: not valid JSON ({err.msg}); expected "
                                      '{"id": "..."} or a bare record id') from None
            if not isinstance(row.get("id"), str) or not row["id"]:
                raise DataSourceError(f'{path}:{line_no}: expected a non-empty string "id", got {row.get("id")!r}')
            text = row["id"]
        ids.add(text)  # a bare line is the id as written, spaces and all (ids may hold them)
    return frozenset(ids)


def exclusions_digest(ids: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def choose(suspects: list[dict], min_score: float | None, top: int | None) -> list[dict]:
    """The suspects to exclude: the `top` first, or those scoring at least `min_score`, else all."""
    if top is not None:
        return suspects[:top]
    if min_score is not None:
        return [s for s in suspects if s["score"] >= min_score]
    return list(suspects)


def _relative_names(data_path: str, shards: list[str]) -> list[str]:
    """Each shard's name under the output: its path below the data directory (or its file name)."""
    fs, root = fsspec.core.url_to_fs(data_path)
    names = []
    for shard in shards:
        _, path = fsspec.core.url_to_fs(shard)
        names.append(os.path.relpath(path, root) if fs.isdir(root) else os.path.basename(path))
    if len(set(names)) != len(names):
        raise DataSourceError(f"{data_path}: two shards share a file name; clean a directory instead of a glob")
    return names


def _kept_lines(shard: str, chosen: dict[str, dict], found: dict[str, str]) -> bytes | list[dict]:
    """The shard without the chosen records: JSONL bytes as they were (bad lines included, for the run's
    own bad-record policy to handle), or Parquet rows."""
    kept_bytes, kept_rows = [], []
    for where, payload in read_shard(shard):
        try:
            record_id = validate_record(parse_payload(payload, where), where).id
        except BadRecord:
            record_id = None
        if record_id in chosen and record_id not in found:
            found[record_id] = str(where)
            continue
        if isinstance(payload, dict):
            kept_rows.append(payload)
        else:
            kept_bytes.append(payload.data if payload.data.endswith(b"\n") else payload.data + b"\n")
    return kept_rows if shard.endswith(".parquet") else b"".join(kept_bytes)


def clean_data(data_path: str, chosen: list[dict], out: Path) -> tuple[int, Path]:
    """Writes `out` (which must not exist or be empty): every shard of `data_path` without the chosen
    records, under the same names, and `excluded.jsonl` (id, file:line, category, language, score,
    reasons). Built in a temporary directory beside `out` and renamed: never half written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataSourceError(f"--out {out}: exists and is not empty; choose a new directory")
    shards = list_shards(data_path)
    by_id = {s["id"]: s for s in chosen}
    found: dict[str, str] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        for shard, name in zip(shards, _relative_names(data_path, shards)):
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            kept = _kept_lines(shard, by_id, found)
            if isinstance(kept, bytes):
                target.write_bytes(kept)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.Table.from_pylist(kept), target)
        missing = [i for i in by_id if i not in found]
        if missing:
            raise DataSourceError(f"{data_path}: {len(missing)} chosen record(s) are not in the data "
                                  f"(e.g. {', '.join(missing[:3])}); was the report made on other data?")
        write_jsonl(tmp / EXCLUDED_FILE, [
            {"id": s["id"], "where": found[s["id"]], "category": s.get("category"), "lang": s.get("lang"),
             "score": s.get("score"), "reasons": s.get("why", "")} for s in chosen])
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(found), out / EXCLUDED_FILE
