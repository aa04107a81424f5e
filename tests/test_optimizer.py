"""AdamW's groups: weight decay on weight matrices only, never on biases and norms (1-D tensors), for
full fine-tuning and LoRA; and a checkpoint's optimizer state says the same."""

import pytest
import torch

from bonsai.config import config_from_dict
from bonsai.model.loading import load_model
from bonsai.train.optimizer import build_optimizer
from conftest import base_config


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_one_dimensional_parameters_are_never_decayed(tmp_path, model_cache, tiny_dir, finetune):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["model"].update(finetune=finetune)
    cfg["train"]["weight_decay"] = 0.1
    cfg = config_from_dict(cfg)
    model = load_model(str(tiny_dir), cfg.model, torch.float32)
    optimizer, _ = build_optimizer(model, cfg)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(decay_of) == len(trainable)  # every trainable tensor is optimised, once
    one_d = [n for n, p in trainable if p.ndim < 2]
    assert one_d if finetune == "full" else True  # the full model has biases and norms to leave alone
    for name, p in trainable:
        assert decay_of[id(p)] == (0.0 if p.ndim < 2 else 0.1), name
