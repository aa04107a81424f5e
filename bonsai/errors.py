"""What training can fail with, in one place: the CLI catches these without importing the trainer,
and turns each into one line and an exit code (see `bonsai.cli`)."""

import sys


class DataError(ValueError):
    """Bad records under `data.on_bad_record: error`; the message lists file, line and field."""


class TrainingUnstable(RuntimeError):
    """The run went wrong and cannot go on: the loss diverged, updates were skipped too often in a row, or
    more rollbacks were needed than monitor.max_rollbacks allows. The message names the last healthy checkpoint."""


class UpdateNotApplied(RuntimeError):
    """An optimizer step that Bonsai did not decide to skip applied no update (or the reverse)."""


class WorldSizeMismatch(RuntimeError):
    """The launcher and Accelerate disagree on the number of processes."""


class CollectiveFailure(RuntimeError):
    """A collective failed or timed out: another rank died or hung."""


class CheckpointMismatch(RuntimeError):
    """A checkpoint that this run cannot resume from (e.g. written by another number of processes)."""


class RunDirLocked(RuntimeError):
    """Another run holds the output_dir; the message names it."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk); the message names the last complete one."""


class ModelSourceError(RuntimeError):
    """model.name_or_path cannot be loaded (no such directory, no network for a hub id)."""


def error_line(err: BaseException, what: str = "error") -> str:
    return f"bonsai: {what}: {err}"


def report_now(err: BaseException) -> None:
    """Print the error's line at once, for a process that may be killed before the CLI prints it; the
    CLI then does not print it again."""
    print(error_line(err), file=sys.stderr, flush=True)
    err.reported = True
