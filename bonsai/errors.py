"""What training can fail with, in one place: the CLI catches these without importing the trainer,
and turns each into one line and an exit code (see `bonsai.cli`)."""


class DataError(ValueError):
    """Bad records under `data.on_bad_record: error`; the message lists file, line and field."""


class TrainingUnstable(RuntimeError):
    """The monitor asked for more rollbacks than monitor.max_rollbacks allows."""


class WorldSizeMismatch(RuntimeError):
    """The launcher and Accelerate disagree on the number of processes."""


class CollectiveFailure(RuntimeError):
    """A collective failed or timed out: another rank died or hung."""


class CheckpointMismatch(RuntimeError):
    """A checkpoint that this run cannot resume from (e.g. written by another number of processes)."""
