"""`bonsai export CHECKPOINT --out DIR`: a checkpoint (ZeRO partitions included) as a Hugging Face
model directory that `AutoModelForCausalLM.from_pretrained` loads; for LoRA the adapter and a merged
model. Runs in one process, on the CPU, whatever the run's world size was."""

from __future__ import annotations

from pathlib import Path

import torch

from bonsai.train.checkpoint import STATE_FILE
from bonsai.config import load_config
from bonsai.data.template import use_template
from bonsai.model.loading import load_model, load_tokenizer, resolve_save_dtype, save_final_model
from bonsai.model.source import resolve_checkpoint
from bonsai.train.distributed import resolve_precision

DEEPSPEED_TAG = "pytorch_model"  # the directory Accelerate's save_state gives the DeepSpeed engine


class ExportError(ValueError):
    pass


def consolidated_state_dict(checkpoint: Path, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's weights in fp32. `trainable_only` (LoRA): just the adapters; a ZeRO checkpoint also
    holds the frozen base's fragments, and consolidating those too would put a second copy of the base in
    memory next to the one the export loads (22 GB for Phi-2)."""
    if (checkpoint / DEEPSPEED_TAG).is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DEEPSPEED_TAG,
                                                        exclude_frozen_parameters=trainable_only)
    weights = checkpoint / "model.safetensors"
    if not weights.exists():
        raise ExportError(f"{checkpoint}: neither {DEEPSPEED_TAG}/ (DeepSpeed) nor model.safetensors found")
    from safetensors.torch import load_file

    return load_file(weights)


def export_checkpoint(checkpoint: Path, out: Path) -> list[Path]:
    checkpoint = Path(checkpoint)
    if not (checkpoint / STATE_FILE).exists():
        raise ExportError(f"{checkpoint} is not a complete Bonsai checkpoint (no {STATE_FILE}); "
                          f"pass RUN_DIR/checkpoints/step_NNNNNNNN")
    cfg = load_config(checkpoint / "config.yaml")
    model_cfg = cfg.model.model_copy(update={"merge_lora_on_save": True, "gradient_checkpointing": False})
    source = resolve_checkpoint(cfg)
    model = load_model(source, model_cfg, torch.float32)
    lora = cfg.model.finetune == "lora"
    state_dict = consolidated_state_dict(checkpoint, trainable_only=lora)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if lora:  # the frozen base comes from its own files; every adapter tensor must come from the checkpoint
        missing = [k for k in missing if "lora_" in k]
    if missing or unexpected:
        raise ExportError(f"{checkpoint}: weights do not fit {source} ({cfg.model.finetune}): "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    save_dtype = resolve_save_dtype(cfg.train.save_dtype, resolve_precision(cfg.train.precision))
    tokenizer = load_tokenizer(source, cfg.model)
    use_template(tokenizer, cfg.model.template)
    return save_final_model(model, tokenizer, model_cfg, Path(out), model.state_dict(),
                            source, save_dtype)
