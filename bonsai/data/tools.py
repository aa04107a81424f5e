"""`bonsai data convert | shard | publish`: getting records into Bonsai's schema, onto shared storage,
and out as a Hugging Face dataset."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import fsspec

from bonsai.data.records import CATEGORIES, LANGUAGES
from bonsai.data.checks import script_language
from bonsai.data.records import Record, Where, validate_record
from bonsai.io import write_json, write_jsonl
from bonsai.data.stream import MANIFEST_NAME, sha256_of

MANIFEST = MANIFEST_NAME
# Dolly's categories in Bonsai's terms; anything else needs --category-map.
DOLLY_CATEGORIES = {
    "open_qa": "open_qa",
    "general_qa": "open_qa",
    "closed_qa": "closed_qa",
    "information_extraction": "closed_qa",
    "summarization": "closed_qa",
    "classification": "classification",
    "brainstorming": "brainstorming",
    "creative_writing": "creative",
}
SOURCE_FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "dolly": ("instruction", "context", "response"),
}


# Chat data: the key of the turn list, and each turn's role and text keys with the roles' names.
CHAT_FORMATS = {
    "messages": ("messages", "role", "content", {"user": "user", "assistant": "assistant", "system": "system"}),
    "sharegpt": ("conversations", "from", "value", {"human": "user", "user": "user", "gpt": "assistant",
                                                    "assistant": "assistant", "system": "system"}),
}


class ConvertError(ValueError):
    pass


def chat_fields(row: dict, where: Where, source: str, drop_system: bool) -> tuple[str, str, str]:
    """(instruction, input, output) of a chat row that is one user turn and one assistant turn."""
    key, role_key, text_key, roles = CHAT_FORMATS[source]
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise ConvertError(f"{where}: field '{key}': expected a list of turns for --format {source}")
    said = []
    for n, turn in enumerate(turns, start=1):
        role = roles.get(turn.get(role_key)) if isinstance(turn, dict) else None
        text = turn.get(text_key) if isinstance(turn, dict) else None
        if role is None or not isinstance(text, str):
            raise ConvertError(f"{where}: field '{key}' turn {n}: expected {{{role_key!r}: one of "
                               f"{', '.join(roles)}, {text_key!r}: text}}, got {str(turn)[:80]}")
        if role == "system" and drop_system:
            continue
        said.append((role, text))
    if [r for r, _ in said] != ["user", "assistant"]:
        shape = " -> ".join(r for r, _ in said) or "nothing"
        hint = ("; pass --drop-system to leave system messages out (Bonsai's templates have no system turn)"
                if "system" in shape else "; a record is one question and its answer (split longer chats first)")
        raise ConvertError(f"{where}: field '{key}': turns are {shape}, expected user -> assistant{hint}")
    return said[0][1], "", said[1][1]


def read_rows(path: str) -> list[tuple[Where, dict]]:
    """JSON (an array of objects), JSONL, or Parquet; local or fsspec."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as f:
            return [(Where(path, i), row) for i, row in enumerate(pq.read_table(f).to_pylist(), start=1)]
    with fsspec.open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConvertError(f"{path}:{line}: not UTF-8: byte 0x{data[err.start:err.start + 1].hex()} at file offset "
                           f"{err.start}; re-encode the file as UTF-8") from None
    if path.endswith(".json") and text.lstrip().startswith("["):
        return [(Where(path, i), row) for i, row in enumerate(json.loads(text), start=1)]
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((Where(path, line_no), json.loads(line)))
            except json.JSONDecodeError as err:
                raise ConvertError(f"{path}:{line_no}: malformed JSON: {err.msg}") from None
    return rows


def stable_id(prefix: str, instruction: str, input_: str, output: str) -> str:
    """The same record gets the same id whatever file, order or run it comes from."""
    digest = hashlib.blake2b("\x1f".join((instruction, input_, output)).encode("utf-8"), digest_size=6).hexdigest()
    return f"{prefix}-{digest}"


def convert_row(row: dict, where: Where, source: str, category_map: dict[str, str], default_category: str | None,
                lang: str | None, prefix: str, drop_system: bool = False) -> dict:
    if not isinstance(row, dict):
        raise ConvertError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if source in CHAT_FORMATS:
        instruction, input_, output = chat_fields(row, where, source, drop_system)
    else:
        instruction, input_, output = (row.get(k) or "" for k in SOURCE_FIELDS[source])
    raw_category = row.get("category")
    if raw_category is not None:
        category = category_map.get(raw_category) or (DOLLY_CATEGORIES.get(raw_category) if source == "dolly" else None) \
            or (raw_category if raw_category in CATEGORIES else None)
        if category is None:
            raise ConvertError(f"{where}: category {raw_category!r} has no Bonsai category; "
                               f"map it with --category-map {raw_category}=<one of {', '.join(CATEGORIES)}>")
    else:
        category = default_category
        if category is None:
            raise ConvertError(f"{where}: no category in the record; give --category for {source} data")
    detected = lang or row.get("lang") or script_language(output) or script_language(instruction)
    if detected not in LANGUAGES:
        raise ConvertError(f"{where}: cannot tell the language of the output; give --lang {'/'.join(LANGUAGES)}")
    record = {"id": row.get("id") or stable_id(prefix, instruction, input_, output), "instruction": instruction,
              "input": input_, "output": output, "category": category, "lang": detected}
    if category == "translation":
        record["source_lang"] = row.get("source_lang") or script_language(input_)
    validate_record(record, where)  # what convert writes, training accepts
    return record


def convert(paths: list[str], out: Path, source: str, category_map: dict[str, str], default_category: str | None,
            lang: str | None, prefix: str, drop_system: bool = False) -> int:
    records = [convert_row(row, where, source, category_map, default_category, lang, prefix, drop_system)
               for path in paths for where, row in read_rows(path)]
    write_jsonl(out, records)
    return len(records)


def every_record(paths: list[str]) -> list[Record]:
    """The records under `paths`, all valid: a tool that rewrites the data must not drop one silently."""
    from bonsai.data.dataset import describe_bad_records, read_records

    read = [read_records(path) for path in paths]
    bad = [str(b) for _, _, found in read for b in found]
    if bad:
        raise ConvertError(f"{describe_bad_records(bad)}\nFix them (`bonsai data audit` lists them too) and run this again")
    return [r for found, _, _ in read for r in found]


def shard(paths: list[str], out_dir: Path, num_shards: int, fmt: str) -> dict:
    """Round-robin into `num_shards` files (sizes differ by at most one) plus a manifest of counts and hashes.
    A bad record is not dropped on the way: it is refused, with every other one, before anything is written."""
    records = [r.__dict__ for r in every_record(paths)]
    records = [{k: v for k, v in r.items() if v is not None} for r in records]
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(num_shards):
        part = records[s::num_shards]
        path = out_dir / f"part-{s:05d}.{fmt}"
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([{**r, "source_lang": r.get("source_lang")} for r in part]), path)
        else:
            write_jsonl(path, part)
        entries.append({"file": path.name, "records": len(part), "sha256": sha256_of(str(path))})
    manifest = {"records": len(records), "shards": entries}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def publish(src: str, out_dir: Path, name: str, license_id: str, repo_id: str | None) -> str:
    """A directory that `datasets.load_dataset(out_dir)` loads, with a dataset card. With a repo id and a
    token (HF_TOKEN), also push it to the Hub."""
    records = every_record([src])
    if not records:
        raise ConvertError(f"{src}: no valid records to publish")
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = [{**r.__dict__, "source_lang": r.source_lang or ""} for r in records]
    write_jsonl(data_dir / "train.jsonl", rows)
    counts = {c: {lang: 0 for lang in LANGUAGES} for c in CATEGORIES}
    for r in records:
        counts[r.category][r.lang] += 1
    table = "\n".join(f"| {c} | " + " | ".join(str(counts[c][lang]) for lang in LANGUAGES) + " |" for c in CATEGORIES)
    card = f"""---
license: {license_id}
language: [{', '.join(LANGUAGES)}]
task_categories: [text-generation]
pretty_name: {name}
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.jsonl
---
# {name}

{len(records)} instruction records for supervised fine-tuning, in Bonsai's schema: `id`, `instruction`,
`input`, `output`, `category`, `lang` (the language of the output) and `source_lang` (translation only).

| category | {' | '.join(LANGUAGES)} |
|---|{'---|' * len(LANGUAGES)}
{table}

License: {license_id}.
"""
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    if not repo_id:
        return f"written {out_dir}: load it with datasets.load_dataset({str(out_dir)!r})"
    token = os.environ.get("HF_TOKEN")
    if not token:
        return f"written {out_dir}; not pushed: set HF_TOKEN to push to {repo_id}"
    import datasets

    try:
        datasets.load_dataset(str(out_dir), split="train").push_to_hub(repo_id, token=token)
    except Exception as err:  # the Hub's errors come from several libraries; the message is what helps
        return f"written {out_dir}; push to {repo_id} failed ({type(err).__name__}: {err}); retry when the Hub is reachable"
    return f"written {out_dir} and pushed to {repo_id}"
