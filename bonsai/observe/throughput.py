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


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: a DeepSpeed ZeRO-3 partition, an FSDP2 DTensor's shard, or itself."""
    if hasattr(t, "ds_tensor"):
        return t.ds_tensor
    return t.to_local() if hasattr(t, "to_local") else t


def _storage(t: torch.Tensor) -> int:
    return t.to_local().data_ptr() if hasattr(t, "to_local") else t.data_ptr()


def training_state_bytes(model, optimizer, grad_shards: int) -> dict[str, float]:
    """This rank's bytes, measured: parameters (a sharded strategy's local part), optimizer state (Adam's
    moments) and master weights (the fp32 copies DeepSpeed's optimizer steps, beyond the model's own);
    and gradients by rule, since they are freed between steps: the trainable bytes over `grad_shards`
    (1 where every rank holds them whole, the world size where they are reduce-scattered)."""
    params, seen, trainable = 0, set(), 0
    for p in model.parameters():
        local = _local(p)
        params += local.numel() * local.element_size()
        seen.add(_storage(p))
        if p.requires_grad:
            trainable += getattr(p, "ds_numel", p.numel()) * p.element_size()
    inner = _innermost(optimizer)
    state = 0
    for per_param in inner.state.values():
        for value in per_param.values():
            if torch.is_tensor(value) and _storage(value) not in seen:
                seen.add(_storage(value))
                local = _local(value)
                state += local.numel() * local.element_size()
    master = 0
    for group in inner.param_groups:
        for p in group["params"]:  # master copies (ZeRO's fp32 partitions); the model's own are already seen
            if _storage(p) not in seen:
                seen.add(_storage(p))
                master += _local(p).numel() * _local(p).element_size()
    grads = trainable / grad_shards
    return {keys.PARAMS_BYTES: float(params), keys.GRADS_BYTES: float(grads),
            keys.OPTIMIZER_BYTES: float(state), keys.MASTER_WEIGHTS_BYTES: float(master)}
