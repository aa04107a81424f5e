"""The one boundary that knows about ranks. Everything else asks a `Dist`; nothing reads RANK itself."""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
from accelerate import Accelerator

from bonsai.config import BonsaiConfig
from bonsai.errors import WorldSizeMismatch
from bonsai.train.strategies.base import Strategy
from bonsai.train.strategies.select import build_strategy, launched_kind


# What the process-group backends say when a peer is gone or silent (gloo, NCCL, torch's c10d).
# Gloo's messages carry their source path ("gloo/transport/tcp/pair.cc: Connection closed by peer").
_PEER_LOST = ("gloo/", "Connection closed by peer", "Connection reset by peer", "Timed out waiting", "timed out",
              "NCCL", "ProcessGroupGloo", "ProcessGroupNCCL", "Broken pipe")


def is_peer_failure(err: BaseException) -> bool:
    return isinstance(err, torch.distributed.DistError) or (
        isinstance(err, RuntimeError) and any(marker in str(err) for marker in _PEER_LOST)
    )


def launcher_world_size() -> int:
    """What the launcher (accelerate launch, torchrun, srun) promised; 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_precision(setting: str) -> str:
    """Accelerate's mixed_precision for a Bonsai precision setting."""
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16"}[setting]


@dataclass
class Dist:
    accelerator: Accelerator
    strategy: Strategy

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a collective: every rank must call it, in the same order)."""
        if self.world_size == 1:
            return values
        return self.accelerator.reduce(values, reduction="sum")

    def max(self, value: int) -> int:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())  # host sync: a control decision every rank must share

    def gather_objects(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Tear the process group down; call once training is over on every rank."""
        self.accelerator.state.destroy_process_group()


def set_cpu_threads(requested: int | None) -> str:
    """Each process takes its share of the cores, so N processes x T threads never oversubscribe them.
    accelerate exports OMP_NUM_THREADS=1 for every launch (one process or many; torchrun does for many),
    which on a CPU box leaves all but one core per process idle; so under a launcher only
    `distributed.threads_per_process` overrides the share. A bare `bonsai train` keeps a user's
    OMP_NUM_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    launched = "LOCAL_WORLD_SIZE" in os.environ or "ACCELERATE_USE_CPU" in os.environ
    if requested is not None:
        threads, why = requested, "distributed.threads_per_process"
    elif not launched and "OMP_NUM_THREADS" in os.environ:
        threads, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        threads, why = max(1, cores // local), f"{cores} core(s) / {local} process(es) on this node"
    torch.set_num_threads(threads)
    return f"threads: {threads} per process ({why})"


SETUP_MMAP_THRESHOLD = 1 << 20  # while the model is built, loaded and partitioned
TRAINING_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its moving threshold
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1


def set_malloc_mmap_threshold(size: int) -> bool:
    """Host-memory blocks of `size` and more are mapped on their own, so freeing one returns it to the
    system. glibc's default threshold rises to the largest block freed (up to 32 MiB): once the first
    weight matrices are freed (ZeRO-3 partitioning the model it built, a loaded state dict), blocks of
    that size come from the heap and the process keeps its peak. Measured: a 0.9 B-parameter Phi under
    ZeRO-3 on 2 CPU ranks held 3.2-3.4 GiB per rank for a 1.66 GiB partition; 2.0 GiB with 1 MiB during
    set-up. Training then uses 32 MiB: with 1 MiB throughout, mapping every activation cost the CPU demo
    18 % of its wall time. A user's MALLOC_MMAP_THRESHOLD_ wins. Returns whether it was set.

    Setting the threshold also stops glibc from moving the trim threshold, which then stays at 128 KiB:
    the heap's free top was handed back to the system after nearly every step and faulted in again (issue
    28: twice the page faults of a bare loop, 1.4 s more system time in 12 steps of bench/framework_cost.py's
    shape). So the trim threshold is set as glibc's own rule would: twice the mmap threshold."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * size)
        done = libc.mallopt(_M_MMAP_THRESHOLD, size)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to fix
        return False
    return done == 1


def use_environment_op_cache() -> str | None:
    """DeepSpeed's CPU ops (cpu_adam, shm_comm) are compiled into TORCH_EXTENSIONS_DIR, by default one
    directory in the home shared by every Python environment; each environment's build differs (its own
    include paths), so two environments rebuild them in turn, 2-3 minutes each time a run first needs
    them. Inside a virtual environment they go into it instead (`make setup` builds them there), unless
    the user chose a directory. Returns the directory set, if one was."""
    if "TORCH_EXTENSIONS_DIR" in os.environ or sys.prefix == sys.base_prefix:
        return None
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
    return os.environ["TORCH_EXTENSIONS_DIR"]


def setup_distributed(cfg: BonsaiConfig, accumulation: int) -> Dist:
    """The launch's strategy, its Accelerator and process group; refuses a world size the launcher did
    not promise."""
    use_environment_op_cache()
    # DeepSpeed calls these deprecated torch names in every step; the warning then floods the log.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")
    strategy = build_strategy(launched_kind(), cfg, accumulation, resolve_precision(cfg.train.precision))
    dist = Dist(strategy.accelerator, strategy)
    expected = launcher_world_size()
    if dist.world_size != expected:
        # Seen with Accelerate + DeepSpeed on CPU: every rank believes it is rank 0 of 1, reads the same
        # data and overwrites the same checkpoint. Refuse to start rather than train wrong.
        raise WorldSizeMismatch(
            f"the launcher started {expected} processes (WORLD_SIZE) but Accelerate sees {dist.world_size} "
            f"(this is rank {dist.rank}); check the launch config's num_processes and the process-group backend"
        )
    return dist


# torch.distributed.elastic's exit barrier, as the agents write it into the first machine's store
# (torch/distributed/elastic/agent/server/api.py and utils/store.py, torch 2.x).
_AGENT_EXIT_COUNT = "{run_id}/torchelastic/agent/terminal_state/num_members"


def leave_after_other_machines(timeout_s: float = 10.0) -> None:
    """Called by a process that finished cleanly, last thing before it exits.

    The launchers' agents (torchrun under `accelerate launch`, one per machine) meet at an exit barrier
    held in the first machine's store. When the first machine's agent is not the last to arrive it
    leaves, and shuts that store down, while another machine's agent still waits on it: that machine
    then prints a traceback after a finished run (pytorch/pytorch#69520). So the first machine's local
    rank 0 waits until every other machine's agent has arrived; its own agent then arrives last and
    releases the others. Bounded: if the store or its keys differ, it gives up after timeout_s."""
    env = os.environ
    machines = int(env.get("GROUP_WORLD_SIZE", "1"))
    if machines < 2 or env.get("GROUP_RANK") != "0" or env.get("LOCAL_RANK") != "0" or "TORCHELASTIC_RUN_ID" not in env:
        return
    import time

    key = _AGENT_EXIT_COUNT.format(run_id=env["TORCHELASTIC_RUN_ID"])
    deadline = time.monotonic() + timeout_s
    try:
        store = torch.distributed.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                                           timeout=timedelta(seconds=timeout_s))
        while store.add(key, 0) < machines - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # An agent counts itself in, then waits on the barrier's key: give that wait time to be asked.
        time.sleep(0.5)
    except (RuntimeError, KeyError, ValueError):  # the store is gone: nothing left to order
        return
