"""Micro-batch, accumulation, clipping and precision are set once, in the Bonsai config, and reach
DeepSpeed from there: a JSON field is "auto" (filled in here) or must agree; a contradiction is an
error naming both places, never a silent override."""

from __future__ import annotations

from bonsai.config import BonsaiConfig, ConfigError


def required_values(cfg: BonsaiConfig, accumulation: int, world_size: int, mixed_precision: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": (cfg.train.micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (accumulation, "train.gradient_accumulation_steps / global_batch_size"),
        "train_batch_size": (cfg.train.micro_batch_size * accumulation * world_size,
                             "train.micro_batch_size x accumulation x processes"),
        "gradient_clipping": (cfg.train.max_grad_norm or 0.0, "train.max_grad_norm"),
        "bf16.enabled": (mixed_precision == "bf16", "train.precision"),
        "fp16.enabled": (mixed_precision == "fp16", "train.precision"),
    }


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return "auto"
        node = node[key]
    return node


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def fill_deepspeed_config(ds_config: dict, cfg: BonsaiConfig, accumulation: int, world_size: int,
                          mixed_precision: str, source: str = "the DeepSpeed config") -> None:
    for key, (value, bonsai_key) in required_values(cfg, accumulation, world_size, mixed_precision).items():
        current = _get(ds_config, key)
        if current != "auto" and current != value and not (key.endswith(".enabled") and current is False and not value):
            raise ConfigError(
                f"{source}: {key} is {current!r} but the Bonsai config gives {value!r} ({bonsai_key}); "
                f'set it to "auto" in the JSON (Bonsai fills it) or change {bonsai_key}'
            )
        _set(ds_config, key, value)
