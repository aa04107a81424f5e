"""Loading a checkpoint into a model that DeepSpeed ZeRO-3 partitions as it is built, one tensor at a time.

transformers' own path under ZeRO-3 (5.x) has rank 0 read every checkpoint shard into one merged state
dict before copying it in: for Phi-2 in fp32 that is 11 GB on rank 0 beside its partition, which is what
made a 2-process Phi-2 run exceed 24 GiB (bench/phi2_cpu_zero3.py). Here the model is built partitioned
(`from_config` applies `deepspeed.zero.Init`), and each parameter is gathered, filled by rank 0 from the
safetensors file (read lazily, one tensor at a time) and partitioned again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bonsai.errors import ModelSourceError


def safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def load_zero3_streamed(directory: Path, main_process: bool, *, dtype: torch.dtype, attn_implementation: str,
                        trust_remote_code: bool):
    """The model of `directory` (a local save_pretrained dir with safetensors), built partitioned under the
    active ZeRO-3 config. Every rank must call it (each parameter is a collective)."""
    import deepspeed
    from safetensors import safe_open

    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    # from_config initialises the weights at random (all of them overwritten below): on forked RNGs, so
    # what is drawn next (LoRA's adapters) is what it is under every other strategy.
    with torch.random.fork_rng():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation,
                                                 trust_remote_code=trust_remote_code)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    aliases = set(model.state_dict())  # tied weights appear here under every name, in params once
    loaded: set[str] = set()
    for file in safetensors_files(directory):
        with safe_open(str(file), framework="pt") as f:  # every rank reads the header; rank 0 the tensors
            for name in f.keys():
                if name in params:
                    with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=0):
                        if main_process:
                            params[name].data.copy_(f.get_tensor(name))
                elif name in buffers:  # not partitioned: every rank reads its own copy
                    buffers[name].copy_(f.get_tensor(name))
                elif name not in aliases:
                    raise ModelSourceError(f"{file}: tensor {name!r} has no place in {type(model).__name__}")
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ModelSourceError(f"{directory}: no weights for {missing[:3]} ({len(missing)} in all)")
    return model
