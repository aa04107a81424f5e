"""Which checkpoint a run loads: the configured directory or hub id, or `tiny-phi` built (once, into
the cache) with a tokenizer trained on the run's own data. The one place where the data layer meets the
model builder, so that neither imports the other."""

from __future__ import annotations

from bonsai.config import TINY_PHI, BonsaiConfig
from bonsai.data.dataset import template_corpus
from bonsai.model.tiny import build_tiny_phi


def resolve_checkpoint(cfg: BonsaiConfig) -> str:
    if cfg.model.name_or_path != TINY_PHI:
        return cfg.model.name_or_path
    return str(tiny_phi_for(cfg.data.path, cfg.model.tiny, cfg.model.cache_dir, cfg.train.seed))


def tiny_phi_for(data_path: str, settings, cache_dir, seed: int):
    """The tiny model for this data (what tests and benchmarks build directly)."""
    corpus_id, texts = template_corpus(data_path)
    return build_tiny_phi(settings, corpus_id, texts, cache_dir, seed)
