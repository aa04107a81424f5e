"""DeepSpeed ZeRO-1/2/3 (optimizer offload or not) through Accelerate.

The engine reduces, clips and steps inside the last micro-batch's backward, so there is no point where
Bonsai could drop a step's update (`updates_in_backward`). Checkpoints are per-rank flat partitions: a
resume on another number of processes, or under another strategy, reads them whole through DeepSpeed's
universal-checkpoint conversion and writes into a ZeRO target through its tensor-fragment API."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
from pathlib import Path

import torch

from bonsai.config import BonsaiConfig
from bonsai.errors import CheckpointMismatch
from bonsai.observe.throughput import training_state_bytes
from bonsai.train.strategies.deepspeed_config import fill_deepspeed_config
from bonsai.train.optimizer import decay_groups
from bonsai.train.strategies.accelerated import AcceleratedStrategy
from bonsai.train.strategies.base import MOMENTS, Layout, WholeState

DEEPSPEED_DIR = "pytorch_model"  # where Accelerate writes a DeepSpeed engine's checkpoint


class ZeroStrategy(AcceleratedStrategy):
    name = "zero"
    updates_in_backward = True

    def _zero(self) -> dict:
        return self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})

    def layout(self) -> Layout:
        device = self._zero().get("offload_optimizer", {}).get("device")
        return Layout("zero", int(self._zero().get("stage", 0)), device not in (None, "none"))

    @property
    def builds_partitioned(self) -> bool:
        return self.layout().zero_stage == 3

    @property
    def shards_parameters(self) -> bool:
        return self.layout().zero_stage == 3

    def compile_refusal(self) -> str | None:
        # ZeRO-3 gathers each Linear's weights in hooks on the Linear itself, inside the layer: torch.compile
        # traces into them and splits every layer into many graphs (seen: 12 graphs for 2 layers on the first
        # step, dynamo's recompile limit hit, the rest of each layer eager).
        if self.layout().zero_stage == 3:
            return ("under ZeRO-3, DeepSpeed gathers weights inside each layer and the compiled layers break "
                    "apart; launch with launch/fsdp2.yaml (sharded like ZeRO-3, and it compiles), or set it to false")
        return None

    def configure(self, cfg: BonsaiConfig, accumulation: int) -> None:
        """Batch, accumulation, clipping and precision in the DeepSpeed config come from Bonsai's."""
        plugin = self.accelerator.state.deepspeed_plugin
        fill_deepspeed_config(plugin.deepspeed_config, cfg, accumulation, self.accelerator.num_processes,
                              self.accelerator.mixed_precision,
                              source=os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "the DeepSpeed config"))
        cfg.monitor.for_strategy(updates_in_backward=True)  # refuses an explicit `skip` before any work

    def full_state_dict(self, model, trainable_only: bool) -> dict[str, torch.Tensor]:
        """LoRA under ZeRO-3: only the adapters, gathered; gathering the whole model instead would put a full
        copy of the frozen base on rank 0 (11 GB for Phi-2 in fp32) just to keep its few MB of adapters."""
        if not trainable_only or self.layout().zero_stage != 3:
            return self.accelerator.get_state_dict(model)
        import deepspeed

        trainable = [(name, p) for name, p in self.unwrap(model).named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in trainable], modifier_rank=None):
            main = self.accelerator.is_main_process
            return {name: p.detach().cpu().clone() for name, p in trainable} if main else {}

    def state_bytes(self, model, optimizer, world_size: int) -> dict[str, float]:
        return training_state_bytes(model, optimizer, grad_shards=world_size if self.layout().zero_stage >= 2 else 1)

    @staticmethod
    def read_whole(dist, checkpoint: Path, order: list[str], scratch: Path) -> WholeState:
        """Converted on rank 0 into `scratch` (one file per tensor); every rank then reads what it needs."""
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

    @staticmethod
    def saved_weights(checkpoint: Path, trainable_only: bool) -> dict[str, torch.Tensor]:
        """DeepSpeed's own consolidation. `trainable_only`: the checkpoint also holds the frozen base's
        fragments, and consolidating those would put a second copy of the base in memory beside the one
        the export loads (22 GB for Phi-2)."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if not (checkpoint / DEEPSPEED_DIR).is_dir():
            raise CheckpointMismatch(f"{checkpoint}: no {DEEPSPEED_DIR}/, which a DeepSpeed checkpoint holds")
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DEEPSPEED_DIR,
                                                        exclude_frozen_parameters=trainable_only)

    def write_whole(self, dist, model, optimizer, whole: WholeState, order: list[str]) -> None:
        zero = model.optimizer  # the DeepSpeed engine's ZeRO optimizer
        _fresh_partition_state(zero, whole.step)
        for name, p in [pair for group in decay_groups(self.unwrap(model)) for pair in group]:
            _put_zero_tensor(p, {key: whole.read(name, key) for key in ("fp32", *MOMENTS)})


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
