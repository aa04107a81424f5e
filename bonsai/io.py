"""The run's files on disk: one atomic writer and one line-numbered JSONL reader.

A writer goes to a temporary file beside the target and renames it into place, so a reader (or a
crash) never sees half a file. Readers name the file and line of anything they cannot parse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


class JsonlError(ValueError):
    """A line of a JSONL file that is not JSON; the message names file and line."""


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks may write side by side
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise JsonlError(f"{path}:{line_no}: not JSON ({err.msg})") from None


def read_jsonl(path: Path, missing_ok: bool = False) -> list[dict]:
    if missing_ok and not Path(path).exists():
        return []
    return [obj for _, obj in iter_jsonl(path)]
