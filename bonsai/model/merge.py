"""A LoRA adapter merged into its base one safetensors shard at a time.

peft's `merge_and_unload` needs the whole base model in memory: for Phi-2 that is a second 11 GB copy on
rank 0 at the end of training, next to the rank's own share of the training model. Here each base shard
is read, its LoRA-targeted weights get `W + scale * B @ A` (peft's own formula for a Linear), and the
shard is written in the save dtype: memory peaks at one shard. The result is a plain model directory.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bonsai.io import write_json

_ADAPTER_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


def local_model_dir(checkpoint: str, revision: str | None) -> Path:
    """A hub id's files in the local Hugging Face cache (they are there: training loaded them)."""
    if Path(checkpoint).is_dir():
        return Path(checkpoint)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(checkpoint, revision=revision, local_files_only=True))


def _lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    unknown = [k for k in weights if not k.endswith((_A, _B))]
    if unknown:
        raise ValueError(f"{adapter_dir}: adapter holds weights other than Linear LoRA pairs ({unknown[:3]}); "
                         f"merge it with peft's merge_and_unload")
    pairs = {}
    for key in weights:
        if key.endswith(_A):
            module = key[: -len(_A)].removeprefix(_ADAPTER_PREFIX)
            pairs[module + ".weight"] = (weights[key], weights[key[: -len(_A)] + _B])
    return pairs, scale


def merge_lora_shards(base_dir: Path, adapter_dir: Path, out: Path, dtype: torch.dtype) -> None:
    pairs, scale = _lora_deltas(adapter_dir)
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{base_dir}: no safetensors weights to merge the adapter into")
    out.mkdir(parents=True, exist_ok=True)
    merged, total_size = set(), 0
    for shard in shards:
        tensors = {}
        with safe_open(str(shard), framework="pt") as source:
            for key in source.keys():
                tensor = source.get_tensor(key)
                if key in pairs:
                    lora_a, lora_b = pairs[key]
                    tensor = tensor.float().addmm_(lora_b.float(), lora_a.float(), alpha=scale)
                    merged.add(key)
                if tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                tensors[key] = tensor.contiguous()
                total_size += tensor.numel() * tensor.element_size()
        save_file(tensors, out / shard.name, metadata={"format": "pt"})
        del tensors
    if merged != set(pairs):
        raise ValueError(f"{adapter_dir}: adapter weights {sorted(set(pairs) - merged)[:3]} have no base weight "
                         f"in {base_dir}")
    _copy_metadata(base_dir, out, dtype, total_size)


def set_saved_dtype(model_dir: Path, dtype: torch.dtype, config_from: Path | None = None) -> None:
    """config.json's dtype (what `from_pretrained(dtype="auto")` loads in) set to the weights' dtype:
    save_pretrained writes the in-memory model's, which differs when the weights were cast on the way out."""
    config = json.loads(((config_from or model_dir) / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    write_json(model_dir / "config.json", config)


def _copy_metadata(base_dir: Path, out: Path, dtype: torch.dtype, total_size: int) -> None:
    set_saved_dtype(out, dtype, config_from=base_dir)
    index = base_dir / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text(encoding="utf-8"))
        data.setdefault("metadata", {})["total_size"] = total_size
        write_json(out / index.name, data)
    if (base_dir / "generation_config.json").exists():
        shutil.copyfile(base_dir / "generation_config.json", out / "generation_config.json")
