"""`bonsai export CHECKPOINT --out DIR`: a checkpoint (ZeRO partitions and FSDP2 shards included) as a Hugging Face
model directory that `AutoModelForCausalLM.from_pretrained` loads; for LoRA the adapter and a merged
model. Runs in one process, on the CPU, whatever the run's world size was."""

from __future__ import annotations

from pathlib import Path

import torch

from bonsai.train.resume.checkpoint import STATE_FILE, read_trainer_state
from bonsai.config import load_config
from bonsai.data.template import use_template
from bonsai.model.loading import load_model, load_tokenizer, resolve_save_dtype, save_final_model
from bonsai.model.source import resolve_checkpoint
from bonsai.train.distributed import resolve_precision
from bonsai.errors import CheckpointMismatch
from bonsai.train.strategies.base import Layout
from bonsai.train.strategies.select import strategy_class
from bonsai.train.strategies.zero import DEEPSPEED_DIR

class ExportError(ValueError):
    pass


def consolidated_state_dict(checkpoint: Path, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's weights in fp32, read by the strategy that wrote them. `trainable_only` (LoRA):
    just the adapters."""
    layout = read_trainer_state(checkpoint).saved_layout()
    if layout is None:  # a checkpoint from before layouts were recorded: DeepSpeed's files say which
        layout = Layout("zero") if (checkpoint / DEEPSPEED_DIR).is_dir() else Layout("ddp")
    try:
        return strategy_class(layout.kind).saved_weights(checkpoint, trainable_only)
    except CheckpointMismatch as err:
        raise ExportError(str(err)) from None


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
