"""Cross-cutting work around the training loop, each piece a callback with its own state (base.py says how
they are called and saved)."""

from bonsai.train.callbacks.base import Callback, Callbacks, PeriodicCallback, StepOutcome
from bonsai.train.callbacks.compile import CompileCallback
from bonsai.train.callbacks.data_log import DataLogCallback
from bonsai.train.callbacks.evaluation import EvalCallback, ProbeCallback, evaluate
from bonsai.train.callbacks.monitor import MonitorCallback
from bonsai.train.callbacks.throughput import THROUGHPUT_WARMUP_STEPS, MemoryCallback, ThroughputCallback

__all__ = ["Callback", "Callbacks", "CompileCallback", "DataLogCallback", "EvalCallback", "MemoryCallback", "MonitorCallback",
           "PeriodicCallback", "ProbeCallback", "StepOutcome", "THROUGHPUT_WARMUP_STEPS", "ThroughputCallback",
           "evaluate"]
