"""Model FLOPs utilisation and memory figures for the step metrics.

FLOPs per trained token (PaLM, appendix B): 6 N for the weights' forward and backward, plus
12 L H S for attention scores and their gradients (N parameters, L layers, H hidden size, S the
row length). With LoRA the frozen weights need no weight gradients: 4 N for them, 6 N for the adapters.
MFU = achieved FLOP/s / (peak FLOP/s per device x devices). Padding tokens are not counted.
"""

from __future__ import annotations

import resource
import sys

import torch

from bonsai import metric_keys as keys
from bonsai.model.loading import count_parameters

# Dense bf16 peak TFLOP/s (vendor figures, without sparsity).
KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def flops_per_token(model, row_length: int) -> float:
    inner = getattr(model, "module", model)
    config = inner.config
    total, trainable = count_parameters(inner)
    return 6 * trainable + 4 * (total - trainable) + 12 * config.num_hidden_layers * config.hidden_size * row_length


def peak_flops_per_device(configured_tflops: float | None) -> float | None:
    if configured_tflops:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def memory_metrics() -> dict[str, float]:
    if torch.cuda.is_available():
        return {keys.MAX_ALLOCATED_GB: torch.cuda.max_memory_allocated() / 2**30,
                keys.MAX_RESERVED_GB: torch.cuda.max_memory_reserved() / 2**30}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {keys.MAX_RSS_GB: peak_rss / (2**30 if sys.platform == "darwin" else 2**20)}


def _innermost(optimizer):
    """The torch optimizer under Accelerate's and DeepSpeed's wrappers (it holds the real state)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def training_state_bytes(model, optimizer, zero_stage: int, world_size: int) -> dict[str, float]:
    """This rank's bytes, measured: parameters (ZeRO-3: the local partition), optimizer state (Adam's
    moments) and master weights (the fp32 copies DeepSpeed's optimizer steps, beyond the model's own);
    and gradients by rule, since they are freed between steps: full for DDP and ZeRO-1, one rank's
    share for ZeRO-2 and 3."""
    params, seen, trainable = 0, set(), 0
    for p in model.parameters():
        local = getattr(p, "ds_tensor", p)
        params += local.numel() * local.element_size()
        seen.add(p.data_ptr())
        if p.requires_grad:
            trainable += getattr(p, "ds_numel", p.numel()) * p.element_size()
    inner = _innermost(optimizer)
    state = 0
    for per_param in inner.state.values():
        for value in per_param.values():
            if torch.is_tensor(value) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                state += value.numel() * value.element_size()
    master = 0
    for group in inner.param_groups:
        for p in group["params"]:  # master copies (ZeRO's fp32 partitions); the model's own are already seen
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                master += p.numel() * p.element_size()
    grads = trainable / world_size if zero_stage >= 2 else trainable
    return {keys.PARAMS_BYTES: float(params), keys.GRADS_BYTES: float(grads),
            keys.OPTIMIZER_BYTES: float(state), keys.MASTER_WEIGHTS_BYTES: float(master)}
