"""DDP (and a single process) through Accelerate: every rank holds the whole model and optimizer."""

from __future__ import annotations

from pathlib import Path

import torch

from bonsai.errors import CheckpointMismatch
from bonsai.observe.throughput import training_state_bytes
from bonsai.train.optimizer import decay_groups
from bonsai.train.strategies.accelerated import AcceleratedStrategy
from bonsai.train.strategies.base import MOMENTS, Layout, WholeState


class DdpStrategy(AcceleratedStrategy):
    name = "ddp"

    def layout(self) -> Layout:
        return Layout("ddp")

    def full_state_dict(self, model, trainable_only: bool) -> dict[str, torch.Tensor]:
        return self.accelerator.get_state_dict(model)

    def state_bytes(self, model, optimizer, world_size: int) -> dict[str, float]:
        return training_state_bytes(model, optimizer, grad_shards=1)

    def checkpoint_bytes(self, per_rank: float, sum_ranks) -> int:
        return int(per_rank)  # one copy, written by rank 0

    @staticmethod
    def read_whole(dist, checkpoint: Path, order: list[str], scratch: Path) -> WholeState:
        """optimizer.bin numbers the parameters in the optimizer's order: `order`, the trainable names as
        bonsai.train.optimizer groups them."""
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

    @staticmethod
    def saved_weights(checkpoint: Path, trainable_only: bool) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        weights = checkpoint / "model.safetensors"
        if not weights.exists():
            raise CheckpointMismatch(f"{checkpoint}: no model.safetensors, which a DDP checkpoint holds")
        return load_file(weights)

    def write_whole(self, dist, model, optimizer, whole: WholeState, order: list[str]) -> None:
        named = [pair for group in decay_groups(self.unwrap(model)) for pair in group]
        adam = optimizer.optimizer  # Accelerate's wrapper around the torch optimizer
        for name, p in named:
            with torch.no_grad():
                p.copy_(whole.read(name, "fp32").view_as(p))
            adam.state[p] = {"step": torch.tensor(float(whole.step)),
                             **{k: whole.read(name, k).view_as(p).to(p.device) for k in MOMENTS}}
