"""Resuming a checkpoint under another strategy (DDP <-> DeepSpeed ZeRO-1/2/3) or, under ZeRO, on another
number of processes: the checkpoint's trainable tensors and their Adam moments are read whole, one tensor
at a time, and put into this run's model and optimizer the way its strategy holds them.

Reading: a DDP checkpoint holds them whole already (model.safetensors, optimizer.bin). A DeepSpeed one
holds per-rank flat partitions; DeepSpeed's universal-checkpoint conversion (ds_to_universal) turns them
into one file per tensor, run here automatically on rank 0 into a scratch directory of the run.
Writing: DDP sets the parameters and AdamW's state; ZeRO-1/2/3 through DeepSpeed's tensor-fragment API
(safe_set_full_fp32_param / safe_set_full_optimizer_state), which writes each rank's part of its partition.
The scheduler comes from the checkpoint too. Per-rank RNG states are not carried over (they belong to
ranks that may not exist any more); nothing in Bonsai's data order depends on them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bonsai.errors import CheckpointMismatch
from bonsai.train.checkpoint import TrainerState
from bonsai.train.distributed import Dist
from bonsai.train.optimizer import decay_groups

MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's state besides its step count
DEEPSPEED_DIR = "pytorch_model"  # where Accelerate writes a DeepSpeed engine's checkpoint
SCRATCH_PREFIX = ".reshard-"


def needs_reshard(saved: TrainerState, world_size: int, zero_stage: int, offload: bool) -> bool:
    """Whether `saved` cannot be loaded as it is: written under another strategy (ZeRO stage, or the
    optimizer offloaded or not: another optimizer class), or as ZeRO partitions for another number of
    ranks. (DDP on another number of ranks loads as it is: its files are whole.)"""
    if saved.zero_stage is None:
        return False  # written before Bonsai recorded its strategy: refused by resize.resume_accumulation
    other_offload = saved.offload is not None and saved.offload != offload
    return saved.zero_stage != zero_stage or other_offload or (zero_stage > 0 and saved.world_size != world_size)


@dataclass
class WholeState:
    """A checkpoint's trainable tensors, whole: `read(name, key)` with key "fp32" or one of MOMENTS, as a
    flat fp32 tensor; `names`: the tensors it holds; `step`: how many updates AdamW has made."""

    names: frozenset[str]
    read: Callable[[str, str], torch.Tensor]
    step: int


def ddp_whole_state(checkpoint: Path, order: list[str]) -> WholeState:
    """A DDP (or one-process) checkpoint. optimizer.bin numbers the parameters in the optimizer's order:
    `order`, the trainable names as bonsai.train.optimizer groups them."""
    from safetensors import safe_open

    optimizer = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=True)
    indices = [i for group in optimizer["param_groups"] for i in group["params"]]
    if len(indices) != len(order):
        raise CheckpointMismatch(f"{checkpoint}/optimizer.bin holds {len(indices)} parameters, this model trains "
                                 f"{len(order)}: it was written for another model or fine-tuning mode")
    state = {name: optimizer["state"].get(i, {}) for name, i in zip(order, indices)}
    weights = safe_open(str(checkpoint / "model.safetensors"), "pt")

    def read(name: str, key: str) -> torch.Tensor:
        if key == "fp32":
            return weights.get_tensor(name).float().flatten()
        return state[name][key].float().flatten()

    steps = {int(s["step"]) for s in state.values() if "step" in s}
    return WholeState(frozenset(weights.keys()) & frozenset(order), read, max(steps, default=0))


def deepspeed_whole_state(checkpoint: Path, scratch: Path, dist: Dist) -> WholeState:
    """A DeepSpeed checkpoint, converted on rank 0 into `scratch` (one file per tensor); every rank then
    reads the tensors it needs from there."""
    failure = None
    if dist.is_main:
        try:
            _to_universal(checkpoint / DEEPSPEED_DIR, scratch)
        except Exception as err:  # noqa: BLE001 - DeepSpeed's converter raises anything; every rank must hear it
            failure = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    failure = dist.gather_objects(failure)[0]
    if failure:
        raise CheckpointMismatch(f"{checkpoint}: DeepSpeed's universal-checkpoint conversion failed ({failure}); "
                                 f"resume with the launch config that wrote it")
    tensors = scratch / "zero"

    def read(name: str, key: str) -> torch.Tensor:
        value = torch.load(tensors / name / f"{key}.pt", map_location="cpu", weights_only=True)
        return (value["param"] if isinstance(value, dict) else value).float().flatten()  # ZeRO-1/2 wrap it

    names = frozenset(p.name for p in tensors.iterdir() if (p / "fp32.pt").is_file())
    return WholeState(names, read, _deepspeed_step(checkpoint / DEEPSPEED_DIR))


def _to_universal(source: Path, target: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal

    shutil.rmtree(target, ignore_errors=True)  # left by an interrupted conversion
    args = argparse.Namespace(input_folder=str(source), output_folder=str(target), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)  # prints progress bars for every step; the trainer says one line
    (target.parent / "latest_universal").unlink(missing_ok=True)  # the converter points its parent at it


def _deepspeed_step(source: Path) -> int:
    """AdamW's step count from rank 0's optimizer partition (mapped, not read whole). DeepSpeed pickles
    its own classes into the file, so it cannot load with weights_only; it is this run's own checkpoint,
    which DeepSpeed itself would load the same way on a same-layout resume."""
    files = sorted(source.glob("*optim_states.pt"))
    if not files:
        raise CheckpointMismatch(f"{source}: no DeepSpeed optimizer partitions (*optim_states.pt) found")
    saved = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)["optimizer_state_dict"]
    # ZeRO-1/2 keep a list of per-group states under base_optimizer_state; ZeRO-3 a torch state dict.
    inner = saved.get("base_optimizer_state") or saved.get("optimizer_state_dict") or {}
    states = inner.get("state", inner) if isinstance(inner, dict) else {}
    steps = [int(s["step"]) for s in (states.values() if isinstance(states, dict) else states)
             if isinstance(s, dict) and "step" in s]
    return max(steps, default=0)


def load_resharded(dist: Dist, checkpoint: Path, saved: TrainerState, model, optimizer, scheduler,
                   scratch: Path) -> tuple[TrainerState, str]:
    """Load `checkpoint` (its trainer state: `saved`), written under another layout, into this run's
    prepared model, optimizer and scheduler. Returns `saved` and a line that says what was done."""
    order = [name for group in decay_groups(dist.accelerator.unwrap_model(model)) for name, _ in group]
    try:
        whole = (deepspeed_whole_state(checkpoint, scratch, dist) if saved.zero_stage
                 else ddp_whole_state(checkpoint, order))
        missing = [name for name in order if name not in whole.names]
        if missing:
            raise CheckpointMismatch(f"{checkpoint} has no tensor {missing[0]} ({len(missing)} of this model's "
                                     f"{len(order)} trainable tensors missing): written for another model")
        put_whole_state(dist, model, optimizer, whole)
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.bin", map_location="cpu", weights_only=True))
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr  # a loaded schedule sets the rate only at its next step
    finally:
        dist.barrier()
        if dist.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
    said = (f"resharded {checkpoint.name}: {len(order)} tensors with their AdamW state (step {whole.step}) from "
            f"{_layout(saved.zero_stage, saved.offload, saved.world_size)} to "
            f"{_layout(dist.zero_stage, dist.offload, dist.world_size)}")
    return saved, said


def _layout(zero_stage: int, offload: bool | None, world_size: int) -> str:
    strategy = f"ZeRO-{zero_stage}{' (optimizer offload)' if offload else ''}" if zero_stage else "DDP"
    return f"{strategy} on {world_size} process(es)"


def put_whole_state(dist: Dist, model, optimizer, whole: WholeState) -> None:
    """Every trainable tensor and its AdamW moments, as this run's strategy holds them."""
    named = [pair for group in decay_groups(dist.accelerator.unwrap_model(model)) for pair in group]
    if not dist.zero_stage:
        adam = optimizer.optimizer  # Accelerate's wrapper around the torch optimizer
        for name, p in named:
            with torch.no_grad():
                p.copy_(whole.read(name, "fp32").view_as(p))
            adam.state[p] = {"step": torch.tensor(float(whole.step)),
                             **{k: whole.read(name, k).view_as(p).to(p.device) for k in MOMENTS}}
        return
    zero = model.optimizer  # the DeepSpeed engine's ZeRO optimizer
    _fresh_partition_state(zero, whole.step)
    for name, p in named:
        _put_zero_tensor(p, {key: whole.read(name, key) for key in ("fp32", *MOMENTS)})


def _fresh_partition_state(zero, step: int) -> None:
    """AdamW's state for every flat fp32 partition this rank owns, so the tensor-fragment API has
    somewhere to write before the first step (AdamW creates it lazily, at its first update)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    flats = getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups
    counted = isinstance(zero.optimizer, DeepSpeedCPUAdam)  # it counts steps in a Python int
    for flat in flats:
        zero.optimizer.state[flat] = {"step": step if counted else torch.tensor(float(step)),
                                      **{k: torch.zeros_like(flat) for k in MOMENTS}}
    if hasattr(zero, "_hp_optimizer_states_linked"):  # ZeRO-1/2 link each tensor to its fragment lazily
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def _put_zero_tensor(p: torch.nn.Parameter, values: dict[str, torch.Tensor]) -> None:
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    shape = getattr(p, "ds_shape", p.shape)
    full = {key: value.view(shape) for key, value in values.items()}
    # The low-precision copy the forward uses: whole on every rank (ZeRO-1/2) or gathered and
    # re-partitioned (ZeRO-3); then the fp32 master and the moments, each rank writing its part.
    with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=hasattr(p, "ds_id")), torch.no_grad():
        p.copy_(full["fp32"].to(p.device, p.dtype))
    safe_set_full_fp32_param(p, full["fp32"].to(p.device))
    for key in MOMENTS:
        safe_set_full_optimizer_state(p, full[key].to(p.device), key)
