"""AdamW with decay on weight matrices only, and the order its parameters are in: a checkpoint's
optimizer state is matched to parameters by that order (bonsai.train.resume.reshard)."""

from __future__ import annotations

import torch

from bonsai.config import BonsaiConfig
from bonsai.model.loading import numel


def decay_groups(model) -> tuple[list[tuple[str, torch.nn.Parameter]], list[tuple[str, torch.nn.Parameter]]]:
    """(decayed, kept): the trainable parameters with their names, in the optimizer's order. No weight
    decay on biases and norms (1-D tensors), as in GPT-style recipes. Under ZeRO-3 a parameter may
    already be an empty 1-D placeholder: its real shape is `ds_shape`."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decayed = [(name, p) for name, p in named if len(getattr(p, "ds_shape", p.shape)) >= 2]
    kept = [(name, p) for name, p in named if len(getattr(p, "ds_shape", p.shape)) < 2]
    return decayed, kept


def build_optimizer(model, cfg: BonsaiConfig) -> tuple[torch.optim.Optimizer, str]:
    """AdamW, and a line that says which tensors it decays (a lost decay is otherwise silent)."""
    decayed, kept = decay_groups(model)
    groups = [{"params": [p for _, p in decayed], "weight_decay": cfg.train.weight_decay},
              {"params": [p for _, p in kept], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.train.lr, betas=cfg.train.adam_betas, eps=cfg.train.adam_eps
    )
    summary = (f"optimizer: AdamW, weight decay {cfg.train.weight_decay} on {len(decayed)} weight matrices "
               f"({sum(numel(p) for _, p in decayed):,} parameters), none on {len(kept)} biases and norms")
    return optimizer, summary
