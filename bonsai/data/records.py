"""The record schema and its validation: every bad record is reported with file, line and field."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# The record schema's closed vocabularies (the README's data table).
CATEGORIES = (
    "open_qa",
    "closed_qa",
    "classification",
    "brainstorming",
    "creative",
    "translation",
    "question_to_question",
)
LANGUAGES = ("ja", "en", "zh")


REQUIRED_TEXT = ("id", "instruction", "output")


@dataclass(frozen=True)
class Record:
    id: str
    instruction: str
    input: str
    output: str
    category: str
    lang: str
    source_lang: str | None = None


@dataclass(frozen=True)
class Where:
    """Where a record came from: shard path and 1-based line (JSONL) or row (Parquet)."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class BadRecord(ValueError):
    """A record that fails validation; the message names its file, line and field."""

    def __init__(self, where: Where, field: str, reason: str, raw: Any = None):
        self.where, self.field, self.reason, self.raw = where, field, reason, raw
        super().__init__(f"{where}: field '{field}': {reason}")

    def as_quarantine_row(self) -> dict:
        raw = self.raw if isinstance(self.raw, (str, dict)) else repr(self.raw)
        return {"path": self.where.path, "line": self.where.line, "field": self.field, "reason": self.reason, "raw": raw}


def parse_json_line(text: str, where: Where) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecord(where, "(line)", f"malformed JSON: {err.msg} at column {err.colno}", text) from None
    if not isinstance(obj, dict):
        raise BadRecord(where, "(line)", f"expected a JSON object, got {type(obj).__name__}", text)
    return obj


def _text_field(obj: dict, name: str, where: Where, required: bool) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise BadRecord(where, name, "missing required field", obj)
        return ""
    if not isinstance(value, str):
        raise BadRecord(where, name, f"expected a string, got {type(value).__name__}", obj)
    if required and not value.strip():
        raise BadRecord(where, name, "empty", obj)
    return value


def validate_record(obj: dict, where: Where) -> Record:
    """Turn one parsed object into a Record, or raise BadRecord naming the first bad field."""
    texts = {name: _text_field(obj, name, where, required=name in REQUIRED_TEXT) for name in (*REQUIRED_TEXT, "input")}
    category = obj.get("category")
    if category not in CATEGORIES:
        reason = "missing required field" if category is None else f"unknown category {category!r}"
        raise BadRecord(where, "category", f"{reason}; expected one of {', '.join(CATEGORIES)}", obj)
    lang = obj.get("lang")
    if lang not in LANGUAGES:
        reason = "missing required field" if lang is None else f"unknown language {lang!r}"
        raise BadRecord(where, "lang", f"{reason}; expected one of {', '.join(LANGUAGES)}", obj)
    source_lang = obj.get("source_lang")
    if category == "translation":
        if source_lang not in LANGUAGES:
            reason = "missing (translation records name their source language)" if source_lang is None else (
                f"unknown language {source_lang!r}"
            )
            raise BadRecord(where, "source_lang", f"{reason}; expected one of {', '.join(LANGUAGES)}", obj)
        if source_lang == lang:
            raise BadRecord(where, "source_lang", f"equals lang {lang!r}; a translation changes language", obj)
    elif source_lang is not None and source_lang not in LANGUAGES:
        raise BadRecord(where, "source_lang", f"unknown language {source_lang!r}", obj)
    return Record(
        id=texts["id"],
        instruction=texts["instruction"],
        input=texts["input"],
        output=texts["output"],
        category=category,
        lang=lang,
        source_lang=source_lang,
    )


def in_eval_split(record_id: str, eval_fraction: float) -> bool:
    """Stable across runs, machines and Python versions (unlike hash())."""
    if eval_fraction <= 0:
        return False
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction
