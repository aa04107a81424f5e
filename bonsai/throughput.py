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

from bonsai.model import count_parameters

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
        return {"memory/max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                "memory/max_reserved_gb": torch.cuda.max_memory_reserved() / 2**30}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"memory/max_rss_gb": peak_rss / (2**30 if sys.platform == "darwin" else 2**20)}
