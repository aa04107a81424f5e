"""`tiny-phi`: a random-init Phi with Phi-2's proportions and a byte-level BPE tokenizer trained on
texts it is given (the run's data as the template renders it: `bonsai.data.dataset.template_corpus`), saved
with save_pretrained so it loads through the same path as microsoft/phi-2.

The hub is out of reach in tests and demos; this keeps every other line of the loading code real. The
model layer knows nothing of records or shards: the caller passes the texts and their identity.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

from bonsai.config import TinyPhiConfig

EOS = "<|endoftext|>"  # Phi-2's end-of-text token, so templates and stop rules are the same


def _cache_key(settings: TinyPhiConfig, corpus_id: str, seed: int) -> str:
    key = {"tiny": settings.model_dump(), "seed": seed, "corpus": corpus_id, "v": 2}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


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


def build_tiny_phi(settings: TinyPhiConfig, corpus_id: str, corpus: Callable[[], Iterator[str]],
                   cache_dir: str | Path, seed: int) -> Path:
    """Build (once per settings, corpus and seed) and return the checkpoint directory. `corpus_id`
    identifies the texts (e.g. a hash of the data); `corpus()` is called only when building."""
    target = Path(cache_dir) / f"tiny-phi-{_cache_key(settings, corpus_id, seed)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus(), settings.vocab_size)
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
