"""The final model is written like a checkpoint: into a temporary directory beside its place, listed
with every file's size, then renamed into place. A crash or a full disk leaves no half-written model/;
a rerun of the finished run finds model/ missing or incomplete and writes it again from the final
checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from bonsai.errors import CheckpointWriteError
from bonsai.io import check_manifest, disk_full, write_manifest

MODEL_MANIFEST = "bonsai_files.json"  # written last into each model directory: its files and their sizes
_TMP = ".tmp-"


def model_problem(directories: list[Path]) -> str | None:
    """What is wrong with the model directories a finished run should hold, or None if all are whole."""
    for directory in directories:
        if not directory.is_dir():
            return f"{directory} is missing"
        if why := check_manifest(directory, MODEL_MANIFEST):
            return f"{directory}: {why}"
    return None


def publish_model(model_dir: Path, write: Callable[[Path], list[Path]], estimate_bytes: int,
                  final_checkpoint: Path | None) -> list[Path]:
    """`write(tmp)` writes the model into `tmp` (and, for a merged LoRA model, `tmp`-merged) and returns
    the directories it wrote; each is listed and renamed into place. Returns the final directories."""
    tmp = model_dir.with_name(f"{_TMP}{model_dir.name}")
    leftovers = [tmp, tmp.with_name(f"{tmp.name}-merged")]
    for old in leftovers:
        shutil.rmtree(old, ignore_errors=True)
    try:
        written = write(tmp)
        for directory in written:
            write_manifest(directory, MODEL_MANIFEST)
    except Exception as err:  # OSError, torch's RuntimeError, safetensors' SafetensorError
        if not disk_full(err):
            raise
        for old in leftovers:
            shutil.rmtree(old, ignore_errors=True)
        free = shutil.disk_usage(model_dir.parent).free
        raise CheckpointWriteError(
            f"no space left on device while writing the final model to {model_dir} (needed ~{estimate_bytes / 2**20:,.0f} "
            f"MiB, free {free / 2**20:,.1f} MiB); the final checkpoint {final_checkpoint or '(none)'} is complete: free "
            f"space and run the same command again, which writes the model from it") from err
    final = []
    for directory in written:
        target = directory.with_name(directory.name.removeprefix(_TMP))
        shutil.rmtree(target, ignore_errors=True)
        directory.rename(target)
        final.append(target)
    return final
