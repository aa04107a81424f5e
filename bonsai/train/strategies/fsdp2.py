"""FSDP2: torch's own `fully_shard` on every decoder layer and the root, with distributed checkpoints (DCP).

Parameters, gradients and AdamW's state are sharded over the ranks as DTensors; each layer's weights are
gathered for its forward and backward and freed after (reshard_after_forward). Mixed precision comes from
train.precision (bf16 compute, fp32 reduction and master weights); activation checkpointing from
model.gradient_checkpointing. A checkpoint is a DCP directory where each rank writes its own shards; it
loads into another number of processes by itself, so only a change of strategy goes through whole
tensors (bonsai.train.resume.reshard).

Bonsai applies FSDP2 itself rather than through Accelerate's plugin: on a machine without CUDA, Accelerate
with an FSDP config runs nothing sharded (its distributed type is NO: seen with accelerate 1.16), while
`fully_shard` and DCP run on CPU over gloo as on GPUs over NCCL."""

from __future__ import annotations

import contextlib
import random
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.distributed as torch_dist

from bonsai.errors import CheckpointMismatch
from bonsai.model.compile import decoder_layers  # each its own FSDP unit
from bonsai.observe.throughput import training_state_bytes
from bonsai.train.strategies.base import MOMENTS, Layout, Strategy, WholeState

DCP_DIR = "dcp"  # the sharded model and optimizer, in a checkpoint
SCHEDULER = "scheduler.bin"
RNG = "rng_rank{rank}.pt"


def causal_lm(model) -> torch.nn.Module:
    """The transformers model inside any wrapper (PEFT's): the FSDP root. Its forward is the one every
    path calls (training, and generate, which PEFT hands straight to it), so the root's embedding and
    head are gathered whichever way the model is entered."""
    from transformers import PreTrainedModel

    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


class Fsdp2Strategy(Strategy):
    name = "fsdp2"
    saves_in_background = True
    shards_parameters = True

    def __init__(self, accelerator, precision: str):
        from torch.distributed.device_mesh import init_device_mesh

        self.accelerator = accelerator
        self.precision = precision
        self.device = accelerator.device
        if not torch_dist.is_initialized():  # one process: a group of one, so the mesh and DCP work alike
            torch_dist.init_process_group("gloo", store=torch_dist.HashStore(), rank=0, world_size=1)
        self.world_size = torch_dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        self.checkpoint_group = None  # created on the first background save

    def layout(self) -> Layout:
        return Layout("fsdp2")

    # --- building -------------------------------------------------------------------------------------

    def shard(self, model):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(self.device)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if self.precision == "bf16" else None,
                                      reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=self.mesh, mp_policy=policy, reshard_after_forward=True)
        self.root = fully_shard(causal_lm(model), mesh=self.mesh, mp_policy=policy, reshard_after_forward=True)
        return model

    # --- a step ---------------------------------------------------------------------------------------

    def micro_batch(self, model, last: bool) -> AbstractContextManager:
        @contextlib.contextmanager
        def sync_on_last():
            self.root.set_requires_gradient_sync(last)  # reduce-scatter only after the last micro-batch
            try:
                yield
            finally:
                self.root.set_requires_gradient_sync(True)

        return sync_on_last()

    def backward(self, loss_sum: torch.Tensor, target_tokens: int, micro_batches: int) -> None:
        # FSDP2 averages the reduce-scattered gradients over ranks; micro-batches add up as they are.
        (loss_sum * (self.world_size / target_tokens)).backward()

    def clip_grad_norm(self, model, max_norm: float | None) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor over the shards

    def describe_update_state(self) -> str:
        return " (FSDP2: the optimizer's step() ran no update)"

    # --- state ----------------------------------------------------------------------------------------

    def prepare(self, model, optimizer, scheduler):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler  # what save and load work on
        return model, optimizer, scheduler

    def save(self, directory: Path, background: bool = False) -> Future | None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state, where = {"model": model_state, "optim": optim_state}, str(directory / DCP_DIR)
        rank = torch_dist.get_rank()
        if rank == 0:
            torch.save(self.scheduler.state_dict(), directory / SCHEDULER)
        torch.save(_rng_state(), directory / RNG.format(rank=rank))
        if not background:
            dcp.save(state, checkpoint_id=where)
            return None
        if self.checkpoint_group is None:
            # The write's own collectives run in a thread while training's run in this one: they must
            # not share a process group (torchtitan does the same). gloo: the staged copy is on the host.
            self.checkpoint_group = torch_dist.new_group(backend="gloo")
        # DCP's default stager copies every tensor to host memory before this returns: training may go on.
        return dcp.async_save(state, checkpoint_id=where, process_group=self.checkpoint_group)

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))  # reshards to this many ranks by itself
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER, map_location="cpu", weights_only=True))
        rng = directory / RNG.format(rank=torch_dist.get_rank())
        if rng.exists():  # a rank the writer did not have keeps its seeded state
            _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))

    def full_state_dict(self, model, trainable_only: bool) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainable_only:
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            full = {k: v for k, v in full.items() if k in trainable}
        return full if torch_dist.get_rank() == 0 else {}

    def state_bytes(self, model, optimizer, world_size: int) -> dict[str, float]:
        return training_state_bytes(model, optimizer, grad_shards=world_size)

    # --- resharding -----------------------------------------------------------------------------------

    @staticmethod
    def read_whole(dist, checkpoint: Path, order: list[str], scratch: Path) -> WholeState:
        """Rank 0 turns the DCP directory into one torch file in `scratch`; every rank maps it."""
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        if dist.is_main:
            scratch.mkdir(parents=True, exist_ok=True)
            dcp_to_torch_save(str(checkpoint / DCP_DIR), str(scratch / "whole.pt"))
        dist.barrier()
        whole = torch.load(scratch / "whole.pt", map_location="cpu", weights_only=True, mmap=True)
        weights, state = whole["model"], whole["optim"]["state"]

        def read(name: str, key: str) -> torch.Tensor:
            return (weights[name] if key == "fp32" else state[name][key]).float().flatten()

        steps = {int(s["step"]) for s in state.values() if "step" in s}
        return WholeState(frozenset(weights) & frozenset(order), read, max(steps, default=0))

    @staticmethod
    def saved_weights(checkpoint: Path, trainable_only: bool) -> dict[str, torch.Tensor]:
        """Every rank's shards, joined by DCP's own converter."""
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        if not (checkpoint / DCP_DIR).is_dir():
            raise CheckpointMismatch(f"{checkpoint}: no {DCP_DIR}/, which an FSDP2 checkpoint holds")
        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(checkpoint / DCP_DIR), f"{tmp}/whole.pt")
            weights = torch.load(f"{tmp}/whole.pt", map_location="cpu", weights_only=True)["model"]
        return {k: v for k, v in weights.items() if not trainable_only or "lora_" in k}

    def write_whole(self, dist, model, optimizer, whole: WholeState, order: list[str]) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_state_dict)

        shapes = {name: p.shape for name, p in model.named_parameters()}
        options = StateDictOptions(full_state_dict=True, strict=False)
        optim_state = get_optimizer_state_dict(model, optimizer, options=options)  # param_groups by name
        optim_state["state"] = {name: {"step": torch.tensor(float(whole.step)),
                                       **{k: whole.read(name, k).view(shapes[name]) for k in MOMENTS}}
                                for name in order}
        weights = {name: whole.read(name, "fp32").view(shapes[name]) for name in order}
        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim_state, options=options)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
