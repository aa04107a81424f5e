"""Loading the model and tokenizer, and wrapping the model for full or LoRA fine-tuning."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bonsai.config import ModelConfig
from bonsai.errors import ModelSourceError
from bonsai.model.attention import resolve_attention
from bonsai.model.merge import local_model_dir, merge_lora_shards, set_saved_dtype
from bonsai.model.loss_head import install_loss_head
from bonsai.model.zero3_load import load_zero3_streamed, safetensors_files


def load_tokenizer(checkpoint: str, cfg: ModelConfig):
    """The tokenizer, with the chat template it was saved with (a trained model's prompt template)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            checkpoint, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as err:  # transformers' words for "not a directory, and the hub is out of reach"
        hint = ("a local model directory, or a hub id with the network (or HF_HUB_OFFLINE=1 once it is in the "
                "Hugging Face cache)") if not Path(checkpoint).exists() else "a directory saved with save_pretrained"
        raise ModelSourceError(f"model.name_or_path {checkpoint!r}: cannot be loaded ({str(err).splitlines()[0][:160]}); "
                               f"expected {hint}") from None
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {checkpoint} has no EOS token; the template ends every response with it")
    if tokenizer.pad_token_id is None:
        # Phi-2 ships no pad token; padding never reaches the loss, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(checkpoint: str, cfg: ModelConfig, weights_dtype: torch.dtype, device_type: str = "cpu",
               main_process: bool = True, partitioned: bool = False, batch_positions: int | None = None,
               row_length: int | None = None):
    """`partitioned`: the strategy builds the model partitioned as it is created (DeepSpeed ZeRO-3, whose
    config transformers then sees): every rank calls this, and `main_process` (rank 0) reads the weights,
    one tensor at a time. `batch_positions` (rows x length of a micro-batch): the loss is chunked only
    where that many positions' logits would be large (`model.loss_chunk_above_mib`); None: as configured.
    `row_length` (data.max_length): what `attn_implementation: auto` chooses by (resolve_attention)."""
    attention = resolve_attention(cfg.attn_implementation, device_type, row_length)
    directory = _local_safetensors_dir(checkpoint, cfg.revision) if partitioned else None
    if directory is not None:
        model = load_zero3_streamed(directory, main_process, dtype=weights_dtype, attn_implementation=attention,
                                    trust_remote_code=cfg.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint,
            revision=cfg.revision,
            dtype=weights_dtype,
            attn_implementation=attention,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=None if cfg.trust_remote_code else True,
        )
    model.config.use_cache = False  # no KV cache in training; it only costs memory
    if loss_chunk_tokens(cfg, model.config.vocab_size, batch_positions):
        install_loss_head(model, cfg.loss_chunk_tokens)
    if cfg.gradient_checkpointing:
        # transformers 5.24 renamed it (the old name warns on every rank); older 5.x has only the old one.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.finetune == "lora":
        model = wrap_lora(model, cfg)
    return model


def loss_chunk_tokens(cfg: ModelConfig, vocab_size: int, batch_positions: int | None) -> int:
    """The chunk size the loss head takes, 0 for whole-row logits: chunks only pay where the logits are big."""
    if not cfg.loss_chunk_tokens or batch_positions is None or not cfg.loss_chunk_above_mib:
        return cfg.loss_chunk_tokens
    logits_mib = batch_positions * vocab_size * 4 / 2**20
    return cfg.loss_chunk_tokens if logits_mib >= cfg.loss_chunk_above_mib else 0


def _local_safetensors_dir(checkpoint: str, revision: str | None) -> Path | None:
    """The checkpoint's local directory when its weights are safetensors files (a hub id once it is in the
    local cache), else None (then transformers loads it its own way)."""
    try:
        directory = local_model_dir(checkpoint, revision)
    except (OSError, ValueError):  # not in the local cache, or no hub id: from_pretrained says what is wrong
        return None
    return directory if safetensors_files(directory) else None


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


def save_final_model(model, tokenizer, cfg: ModelConfig, out: Path, state_dict: dict, base_checkpoint: str,
                     save_dtype: torch.dtype) -> list[Path]:
    """save_pretrained (safetensors) from a full state dict (`Accelerator.get_state_dict`, which gathers
    ZeRO-3 partitions): a full model in `save_dtype`; for LoRA the fp32 adapter and, on request, the
    merged model built shard by shard from the saved adapter and the base's files, which is the same under
    every sharding strategy and never holds a second copy of the model. Returns the dirs written."""
    written = [out]
    if cfg.finetune == "full":
        state_dict = {k: v.to(save_dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    if cfg.finetune == "full":
        set_saved_dtype(out, save_dtype)
    tokenizer.save_pretrained(out)
    if cfg.finetune == "lora" and cfg.merge_lora_on_save:
        merged_dir = out.parent / f"{out.name}-merged"
        merge_lora_shards(local_model_dir(base_checkpoint, cfg.revision), out, merged_dir, save_dtype)
        tokenizer.save_pretrained(merged_dir)
        written.append(merged_dir)
    return written


def resolve_save_dtype(setting: str, mixed_precision: str) -> torch.dtype:
    """train.save_dtype: auto follows the precision the run computed in ("bf16" or "no")."""
    if setting == "auto":
        setting = "bf16" if mixed_precision == "bf16" else "fp32"
    return torch.bfloat16 if setting == "bf16" else torch.float32


def numel(p: torch.Tensor) -> int:
    """A parameter's full size; under ZeRO-3 the local tensor is an empty placeholder."""
    return getattr(p, "ds_numel", p.numel())


def count_parameters(model) -> tuple[int, int]:
    total = sum(numel(p) for p in model.parameters())
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return total, trainable


def load_for_inference(path: str, trust_remote_code: bool = False):
    """A saved model for generation: a full or merged model dir, a hub id, or a LoRA adapter dir (its
    base is read from adapter_config.json). Returns (model, tokenizer) on the GPU when there is one. The
    tokenizer carries the prompt template saved with the model."""
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
