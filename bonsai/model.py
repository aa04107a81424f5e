"""Loading the model and tokenizer, and wrapping the model for full or LoRA fine-tuning."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bonsai.config import TINY_PHI, BonsaiConfig, ModelConfig


def resolve_checkpoint(cfg: BonsaiConfig) -> str:
    """The directory or hub id to load; `tiny-phi` is built into the cache first."""
    if cfg.model.name_or_path != TINY_PHI:
        return cfg.model.name_or_path
    from bonsai.tiny import build_tiny_phi

    return str(build_tiny_phi(cfg.model.tiny, cfg.data.path, cfg.model.cache_dir, cfg.train.seed))


def load_tokenizer(checkpoint: str, cfg: ModelConfig):
    tokenizer = AutoTokenizer.from_pretrained(
        checkpoint, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {checkpoint} has no EOS token; the template ends every response with it")
    if tokenizer.pad_token_id is None:
        # Phi-2 ships no pad token; padding never reaches the loss, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(checkpoint: str, cfg: ModelConfig, weights_dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint,
        revision=cfg.revision,
        dtype=weights_dtype,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=None if cfg.trust_remote_code else True,
    )
    model.config.use_cache = False  # no KV cache in training; it only costs memory
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.finetune == "lora":
        model = wrap_lora(model, cfg)
    return model


def wrap_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.lora.target_modules if t not in present]
    if missing:
        raise ValueError(f"model.lora.target_modules: {missing} not found in the model (it has e.g. {sorted(present)[:12]})")
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph at the first block
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    # Adapters train in fp32 even over a bf16 base: their updates are small.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def save_final_model(model, tokenizer, cfg: ModelConfig, out: Path, save_fn) -> list[Path]:
    """save_pretrained (safetensors) of the unwrapped model; for LoRA the adapter, and a merged model on request.
    `save_fn` is the Accelerator's save (it knows which rank writes). Returns the directories written."""
    written = [out]
    model.save_pretrained(out, safe_serialization=True, save_function=save_fn)
    tokenizer.save_pretrained(out)
    if cfg.finetune == "lora" and cfg.merge_lora_on_save:
        merged_dir = out.parent / f"{out.name}-merged"
        merged = model.merge_and_unload()
        merged.save_pretrained(merged_dir, safe_serialization=True, save_function=save_fn)
        tokenizer.save_pretrained(merged_dir)
        written.append(merged_dir)
    return written


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def load_for_inference(path: str, trust_remote_code: bool = False):
    """A saved model for generation: a full or merged model dir, a hub id, or a LoRA adapter dir (its
    base is read from adapter_config.json). Returns (model, tokenizer) on the GPU when there is one."""
    import json

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    cfg = ModelConfig(name_or_path=path, trust_remote_code=trust_remote_code)
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(model, path)
        tokenizer = load_tokenizer(path if (Path(path) / "tokenizer_config.json").exists() else base, cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if trust_remote_code else True)
        tokenizer = load_tokenizer(path, cfg)
    return model.to(device).eval(), tokenizer
