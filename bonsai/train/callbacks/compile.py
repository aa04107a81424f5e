"""What `train.compile` costs: the compile of the first step, and every graph built after it.

One graph per shape and grad mode is expected: the first training step's, and evaluation's (no gradients)
at the first eval. A graph built at any other step is a recompilation, and the log says at which step, so
a shape that changes from batch to batch shows up at once instead of as a slow run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bonsai.model.compile import compile_count
from bonsai.train.callbacks.base import Callback, StepOutcome

if TYPE_CHECKING:
    from bonsai.train.trainer import Trainer


class CompileCallback(Callback):
    name = "compile"

    def __init__(self) -> None:
        self.graphs, self.seconds = 0, 0.0  # this run's, in this process
        self.first_step_s: float | None = None
        self.later_graphs = 0  # built after this process's first step
        self.built_at: list[int] = []  # the steps at which graphs were built

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        self.before = compile_count()  # what this process compiled before this run (tests run several)

    def post_step(self, outcome: StepOutcome) -> None:
        now = compile_count()
        graphs, seconds = now.graphs - self.before.graphs, now.seconds - self.before.seconds
        new, self.graphs, self.seconds = graphs - self.graphs, graphs, seconds
        if new:
            self.built_at.append(outcome.step)
        if self.first_step_s is None:
            self.first_step_s = outcome.elapsed_s
            self.trainer.say(f"compile: first step {outcome.elapsed_s:.1f} s, of it compiling {graphs} graph(s) "
                             f"in {seconds:.1f} s")
        elif new:
            self.later_graphs += new
            self.trainer.say(f"compile: {new} more graph(s) at step {outcome.step} (evaluation's no-grad forward, "
                             f"or a new shape); {graphs} graph(s) in {seconds:.1f} s in all")

    def summary(self) -> dict:
        return {"compile": {"graphs": self.graphs, "seconds": round(self.seconds, 1),
                            "graphs_after_first_step": self.later_graphs, "built_at_steps": self.built_at,
                            "first_step_s": None if self.first_step_s is None else round(self.first_step_s, 1)}}
