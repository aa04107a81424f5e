"""The run's files on disk: one atomic writer and one line-numbered JSONL reader.

A writer goes to a temporary file beside the target and renames it into place, so a reader (or a
crash) never sees half a file. Readers name the file and line of anything they cannot parse.
"""

from __future__ import annotations

import errno
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


def write_manifest(directory: Path, name: str, **extra) -> None:
    """`directory/name`, written last: every other file below `directory` and its size (what says the rest
    is whole)."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != name}
    write_json(directory / name, {**extra, "files": files})


def check_manifest(directory: Path, name: str) -> str | None:
    """What is wrong with a directory against its manifest (one line), or None if every file is there at
    its size."""
    try:
        files = json.loads((Path(directory) / name).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"{name} is missing (the save did not complete)"
    except (ValueError, KeyError):
        return f"{name} is unreadable"
    for rel, size in files.items():
        file = Path(directory) / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != size:
            return f"{rel} is {file.stat().st_size:,} bytes, {size:,} were written (truncated or changed)"
    return None


def disk_full(err: BaseException) -> bool:
    """Whether a failed write failed for lack of space (as the OS, safetensors or torch.save say it)."""
    text = str(err)
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left" in text or "os error 28" in text \
        or "unexpected pos" in text  # torch.save's zip writer when a write comes up short
