"""`tiny-phi`: a random-init Phi with Phi-2's proportions and a byte-level BPE tokenizer trained on the
run's own data, saved with save_pretrained so it loads through the same path as microsoft/phi-2.

The hub is out of reach in tests and demos; this keeps every other line of the loading code real.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

from bonsai.config import TinyPhiConfig
from bonsai.dataset import read_valid_records
from bonsai.stream import list_shards
from bonsai.template import render_prompt

EOS = "<|endoftext|>"  # Phi-2's end-of-text token, so templates and stop rules are the same


def _cache_key(settings: TinyPhiConfig, shards: list[str], seed: int) -> str:
    h = hashlib.sha256(json.dumps({"tiny": settings.model_dump(), "seed": seed, "v": 1}, sort_keys=True).encode())
    for shard in shards:
        h.update(shard.encode())
        with fsspec.open(shard, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _corpus(data_path: str) -> Iterator[str]:
    """Training text for the tokenizer: prompts as the template renders them, and outputs."""
    for record in read_valid_records(data_path):
        yield render_prompt(record) + record.output


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


def build_tiny_phi(settings: TinyPhiConfig, data_path: str, cache_dir: str | Path, seed: int) -> Path:
    """Build (once per settings, data and seed) and return the checkpoint directory."""
    shards = list_shards(data_path)
    target = Path(cache_dir) / f"tiny-phi-{_cache_key(settings, shards, seed)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(_corpus(data_path), settings.vocab_size)
    config = PhiConfig(
        vocab_size=settings.vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        max_position_embeddings=settings.max_position_embeddings,
        partial_rotary_factor=0.4,
        # Phi-2 trains with resid_pdrop 0.1; zero here so runs are exactly comparable in tests.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    # A private RNG stream: building the cache must not change the run's random state (LoRA init,
    # shuffling), or a run would differ depending on whether the cache already existed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PhiForCausalLM(config)
    # Build beside the target and rename: ranks racing here, or a crash, never leave half a model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-phi-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
