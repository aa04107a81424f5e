"""The strategy seam: one object per way of holding the model and optimizer across processes.

The trainer, the step, checkpointing, resharding, export, throughput and memory accounting and the model
card ask the run's Strategy; none of them tests a ZeRO stage (torchtitan's ParallelDims and OLMo-core's
TrainModule play this part there). Strategies: DDP (one process included) and DeepSpeed ZeRO-1/2/3 through
Accelerate (bonsai.train.strategies.ddp and .zero, on .accelerated), FSDP2 with torch's own fully_shard and distributed
checkpoints (bonsai.train.strategies.fsdp2). Adding one is a module with a Strategy and its tests.

Every checkpoint records its strategy's Layout, so a resume knows whether it can load the files as they
are or must reshard them through whole tensors (bonsai.train.resume.reshard).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's state besides its step count


@dataclass(frozen=True)
class Layout:
    """How a checkpoint holds the model and optimizer (recorded in every checkpoint's trainer state)."""

    kind: str  # "ddp" (one process included) | "zero" | "fsdp2"
    zero_stage: int = 0
    offload: bool = False  # ZeRO's optimizer on the CPU (DeepSpeedCPUAdam, another optimizer class)

    def describe(self) -> str:
        if self.kind == "zero":
            return f"ZeRO-{self.zero_stage}{' (optimizer offload)' if self.offload else ''}"
        return {"ddp": "DDP", "fsdp2": "FSDP2"}[self.kind]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_saved(cls, layout: dict | None, zero_stage: int | None, offload: bool | None) -> Layout | None:
        """A checkpoint's layout; older checkpoints recorded only a ZeRO stage (0: DDP); None: not recorded."""
        if layout:
            return cls(**layout)
        if zero_stage is None:
            return None
        return cls("zero", zero_stage, bool(offload)) if zero_stage else cls("ddp")

    def loads_as_is(self, other: Layout, same_world: bool) -> bool:
        """Whether a checkpoint of this layout loads into a run of `other` without resharding: the same
        strategy, and the same number of processes where its files are per-rank partitions that cannot
        be read by another count (ZeRO). DDP files are whole; FSDP2's distributed checkpoints reshard on
        load by themselves."""
        return self == other and (same_world or self.kind != "zero")


@dataclass
class WholeState:
    """A checkpoint's trainable tensors, whole: `read(name, key)` with key "fp32" or one of MOMENTS, as a
    flat fp32 tensor; `names`: the tensors it holds; `step`: how many updates AdamW has made."""

    names: frozenset[str]
    read: Callable[[str, str], torch.Tensor]
    step: int


class Strategy:
    """What the trainer asks of a way of sharding. Methods that are collectives say so."""

    name = "strategy"
    updates_in_backward = False  # DeepSpeed: the engine steps inside the last backward (no skip possible)
    builds_partitioned = False  # DeepSpeed ZeRO-3: parameters are partitioned as the model is created
    shards_parameters = False  # every forward gathers weights (a collective): ranks must run as many
    precision = "no"  # the compute precision: "no" (fp32) or "bf16"
    saves_in_background = False  # `save(..., background=True)` can hand the write to a thread (FSDP2's DCP)

    def layout(self) -> Layout:
        raise NotImplementedError

    def describe(self, world_size: int) -> str:
        return f"{self.layout().describe()} on {world_size} process(es)"

    # --- building -------------------------------------------------------------------------------------

    def configure(self, cfg, accumulation: int) -> None:
        """Once the config and the accumulation are known, before the model is built on."""

    def shard(self, model):
        """The model as this strategy holds it before the optimizer is built (FSDP2 shards it here)."""
        return model

    def prepare(self, model, optimizer, scheduler):
        """Model, optimizer and scheduler as the loop uses them (Accelerate's wrappers, or as they are)."""
        return model, optimizer, scheduler

    def unwrap(self, model):
        return model

    def compile_refusal(self) -> str | None:
        """Why train.compile cannot run under this strategy, or None."""
        return None

    # --- a step ---------------------------------------------------------------------------------------

    def micro_batch(self, model, last: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward; `last`: gradients are reduced after it."""
        raise NotImplementedError

    def backward(self, loss_sum: torch.Tensor, target_tokens: int, micro_batches: int) -> None:
        """Backward of a micro-batch's loss sum, divided by the response tokens of the whole step on all
        ranks: the gradient that results is the step's mean, whatever the strategy averages over ranks
        or micro-batches, and however the step's rows are split."""
        raise NotImplementedError

    def clip_grad_norm(self, model, max_norm: float | None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, optimizer, scheduler, skip: bool) -> None:
        """Apply the update (or drop the step's gradients), and move the schedule on."""
        if not skip:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def start_step(self, micro_batches: int) -> None:
        """Before a step's first micro-batch."""

    def describe_update_state(self) -> str:
        """What explains an update that did not happen (for the guard's message)."""
        return ""

    # --- state ----------------------------------------------------------------------------------------

    def save(self, directory: Path, background: bool = False) -> Future | None:
        """Collective: model, optimizer, scheduler and this rank's RNG into `directory`. `background`
        (where `saves_in_background`): the state is copied to host memory and the returned future
        finishes the write; the weights may change meanwhile."""
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        """Collective: what `save` wrote (the same layout; FSDP2 also on another number of processes)."""
        raise NotImplementedError

    def full_state_dict(self, model, trainable_only: bool) -> dict[str, torch.Tensor]:
        """Collective: the weights whole, on rank 0 ({} elsewhere); `trainable_only`: LoRA's adapters."""
        raise NotImplementedError

    def state_bytes(self, model, optimizer, world_size: int) -> dict[str, float]:
        """This rank's bytes of parameters, gradients (by rule), optimizer state and master weights."""
        raise NotImplementedError

    def checkpoint_bytes(self, per_rank: float, sum_ranks: Callable[[float], float]) -> int:
        """What a checkpoint takes on disk, from this rank's state bytes: one copy (DDP), or every rank's
        part (sharded strategies; `sum_ranks` is a collective)."""
        return int(sum_ranks(per_rank))

    # --- resharding -----------------------------------------------------------------------------------

    def read_whole(self, checkpoint: Path, order: list[str], scratch: Path) -> WholeState:
        """Collective: a checkpoint written under this strategy, as whole tensors (a reshard's source)."""
        raise NotImplementedError

    @staticmethod
    def saved_weights(checkpoint: Path, trainable_only: bool) -> dict[str, torch.Tensor]:
        """One process, no process group: a checkpoint written under this strategy as fp32 weights
        (`bonsai export`); `trainable_only` (LoRA): just the adapters."""
        raise NotImplementedError

    def write_whole(self, model, optimizer, whole: WholeState, order: list[str]) -> None:
        """Collective: whole tensors and their AdamW moments into this run's model and optimizer."""
        raise NotImplementedError
