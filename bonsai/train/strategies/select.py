"""Which strategy this launch asked for, from what `accelerate launch` puts in every process's environment
(the shipped launch/*.yaml files choose it), and the Accelerator each one needs."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from bonsai.config import BonsaiConfig, ConfigError
from bonsai.train.strategies.base import Strategy

KINDS = ("ddp", "zero", "fsdp2")


def launched_kind() -> str:
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "zero"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        if env.get("FSDP_VERSION", "1") != "2":
            raise ConfigError("the launch config asks for FSDP version 1; Bonsai runs FSDP2: set "
                              "`fsdp_version: 2` in its fsdp_config (launch/fsdp2.yaml is one)")
        return "fsdp2"
    return "ddp"


def build_strategy(kind: str, cfg: BonsaiConfig, accumulation: int, precision: str) -> Strategy:
    """The Accelerator for `kind` and the strategy around it (the process group is initialised here)."""
    group = {"timeout": timedelta(seconds=cfg.distributed.timeout_s)}
    if kind == "zero" and not torch.cuda.is_available():
        # Without CUDA, Accelerate + DeepSpeed otherwise starts every rank as rank 0 of 1 (see
        # bonsai.train.distributed). Plain DDP on CPU must not get this kwarg: it then fails to initialise.
        group["backend"] = "gloo"
    if kind == "fsdp2":
        # Bonsai shards the model itself; Accelerate must see a plain multi-process run (its own FSDP path
        # would wrap the model again on GPUs, and does nothing at all on a CPU).
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and kind != "zero",
        mixed_precision="no" if kind == "fsdp2" else precision,  # FSDP2: its own mixed-precision policy
        kwargs_handlers=[InitProcessGroupKwargs(**group)],
        # Bonsai steps the scheduler once per optimizer step itself; Accelerate would otherwise step it
        # once per process, and the LR curve would depend on the world size.
        step_scheduler_with_optimizer=False,
        gradient_accumulation_steps=accumulation,
    )
    return strategy_class(kind)(accelerator, precision)


def strategy_class(kind: str) -> type[Strategy]:
    """The class of a checkpoint's strategy (its reader, for a reshard)."""
    if kind == "zero":
        from bonsai.train.strategies.zero import ZeroStrategy

        return ZeroStrategy
    if kind == "fsdp2":
        from bonsai.train.strategies.fsdp2 import Fsdp2Strategy

        return Fsdp2Strategy
    from bonsai.train.strategies.ddp import DdpStrategy

    return DdpStrategy
