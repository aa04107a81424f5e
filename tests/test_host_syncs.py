"""Host synchronisations per training step, counted (bonsai.observe.host_syncs): counts are deterministic,
so a change that adds a `.item()`, a `.tolist()` or a boolean mask to the step fails here, on the CPU,
before it costs a GPU run its overlap."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

from bonsai.config import BonsaiConfig
from bonsai.observe.host_syncs import HostSyncCounter
from bonsai.train.callbacks import Callback
from bonsai.train.distributed import setup_distributed
from bonsai.train.trainer import Trainer

from conftest import base_config

# One process, one micro-batch, the monitor and every logger on: the monitor's single read of the step's
# values (StepStats.host, shared with the metrics row), and transformers' own check for packed positions
# in the model's forward (masking_utils.find_packed_sequence_indices; a bare loop passing position_ids
# pays it too). sdpa_varlen finds the documents from the batch's host copy of its positions. With the
# dense block mask (auto's choice for short rows on a CPU) transformers has no positions to check.
EXPECTED = {"sdpa_varlen": {"tolist": 1, "item": 1}, "sdpa": {"tolist": 1}}


def counted_step(tmp_path, model_cache, attention: str, step: int = 2) -> dict[str, int]:
    """The host syncs of training step `step`, without AdamW's own (its per-parameter step counts are
    host tensors even on a GPU: reading them waits for nothing)."""
    raw = base_config(tmp_path / "run", model_cache)
    raw["train"].update(max_steps=step + 1, log_every=1, checkpoint_every=0)
    raw["eval"] = {"every_steps": 0, "probes": None}
    raw["logging"]["wandb"] = {"mode": "disabled"}
    raw["model"]["attn_implementation"] = attention
    cfg = BonsaiConfig.model_validate(raw)
    trainer = Trainer(cfg, setup_distributed(cfg, 1), 1, time.perf_counter())
    assert trainer.setup() is None
    counter = HostSyncCounter()
    strategy_step = trainer.dist.strategy.step

    def step_without_counting(*args, **kwargs):
        with _disable_current_modes():
            return strategy_step(*args, **kwargs)

    trainer.dist.strategy.step = step_without_counting

    class Switch(Callback):
        name = "sync_switch"

        def post_step(self, outcome) -> None:
            if outcome.step == step - 1:
                counter.__enter__()
            elif outcome.step == step:
                counter.__exit__(None, None, None)

    trainer.callbacks.callbacks.append(Switch())
    try:
        assert trainer.fit() is None
    finally:
        trainer.close()
    return dict(counter.counts)


@pytest.mark.parametrize("attention", sorted(EXPECTED))
def test_a_step_reads_the_device_only_where_the_monitor_and_the_attention_must(tmp_path, model_cache, attention):
    assert counted_step(tmp_path, model_cache, attention) == EXPECTED[attention]


def test_the_counter_sees_item_tolist_and_boolean_masks():
    t = torch.arange(6.0)
    with HostSyncCounter() as syncs:
        t.sum().item()
        t.tolist()
        _ = t[t > 2]
        torch.nonzero(t)
        _ = t[torch.tensor([0, 2])]  # integer indices: no sync
    assert syncs.counts == {"item": 1, "tolist": 1, "bool_index": 1, "nonzero": 1}
