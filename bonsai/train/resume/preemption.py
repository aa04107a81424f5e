"""Graceful stop: the trainer finishes its step, checkpoints and exits with EXIT_PREEMPTED when

- a SIGTERM or SIGUSR1 arrives (SLURM preemption, a launcher's Ctrl-C): the handler only sets a flag;
- the stop file named by BONSAI_STOP_FILE exists (slurm/train.sbatch creates it when SLURM signals the
  batch shell: a file reaches every node's ranks, while a signal to the job's steps would also hit
  torchrun's agent, which then kills its workers after 30 s, mid-checkpoint);
- the job's end time (BONSAI_DEADLINE, epoch seconds) is nearer than the longest step plus the longest
  checkpoint so far plus a margin: a guard for when SLURM's warning signal comes late or not at all.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from bonsai.io import write_jsonl
from bonsai.rundir import RunDir

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", which is what a requeue does
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
STOP_FILE_ENV = "BONSAI_STOP_FILE"
DEADLINE_ENV = "BONSAI_DEADLINE"
DEADLINE_MARGIN_S = 60.0
STOPPED_FILE = "stopped.json"  # written once the stop checkpoint is complete; slurm/train.sbatch reads it


def under_launcher_agent() -> bool:
    """torchrun's elastic agent (which `accelerate launch` runs) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def preempted_exit_code(reason: str | None = None) -> int:
    """EXIT_PREEMPTED when run directly (EXIT_INTERRUPTED after Ctrl-C). Under torchrun's agent, 0: the
    agent turns any other code into its own 1 and a ChildFailedError traceback, which a script cannot
    tell from a crash. There the stop is told apart by RUN_DIR/stopped.json (what slurm/train.sbatch
    reads)."""
    if under_launcher_agent():
        return 0
    return EXIT_INTERRUPTED if reason == "SIGINT" else EXIT_PREEMPTED


def deadline_reached(now: float, deadline: float | None, longest_step_s: float, longest_checkpoint_s: float,
                     margin_s: float = DEADLINE_MARGIN_S) -> bool:
    """Would one more step plus a checkpoint risk running past the deadline?"""
    return deadline is not None and now + longest_step_s + longest_checkpoint_s + margin_s >= deadline


class StopRequest:
    def __init__(self, stop_file: str | None = None, deadline: float | None = None,
                 margin_s: float = DEADLINE_MARGIN_S):
        self.signal_name: str | None = None
        self.stop_file = Path(stop_file) if stop_file else None
        self.deadline = deadline
        self.margin_s = margin_s
        self.longest_step_s = 0.0
        self.longest_checkpoint_s = 0.0
        self._previous = {}

    @classmethod
    def from_env(cls) -> StopRequest:
        deadline = os.environ.get(DEADLINE_ENV, "").strip()
        return cls(os.environ.get(STOP_FILE_ENV) or None, float(deadline) if deadline else None)

    @property
    def reason(self) -> str | None:
        """Why this process wants to stop (None: it does not). Checked once per step."""
        if self.signal_name:
            return self.signal_name
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop file {self.stop_file}"
        if deadline_reached(time.time(), self.deadline, self.longest_step_s, self.longest_checkpoint_s,
                            self.margin_s):
            return f"job ends at {time.strftime('%H:%M:%S', time.localtime(self.deadline))}"
        return None

    def note_step(self, seconds: float) -> None:
        self.longest_step_s = max(self.longest_step_s, seconds)

    def note_checkpoint(self, seconds: float) -> None:
        self.longest_checkpoint_s = max(self.longest_checkpoint_s, seconds)

    def _handle(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            # Ctrl-C finishes the step and checkpoints, like SIGTERM; a second Ctrl-C aborts at once.
            print("Ctrl-C: finishing this step and checkpointing (Ctrl-C again to abort without saving)",
                  file=sys.stderr, flush=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def install(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def write_stopped(run_dir: Path, step: int, checkpoint: Path, reason: str) -> None:
    """Tells the batch script that this run stopped on request with a complete checkpoint (the exit
    code alone does not survive `accelerate launch`, which reports any worker's non-zero exit as 1)."""
    record = {"step": step, "checkpoint": str(checkpoint), "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_jsonl(RunDir(run_dir).stopped, [record])  # one line: a JSON document, written atomically
