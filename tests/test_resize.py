"""Resuming a run on another number of processes or under another strategy, end to end: `bonsai train`
on N processes, then the same command (train.max_steps raised, as a user continues a run) on M, through
the shipped launch files. Every record the two stretches trained is read back from RUN_DIR/data_log:
within an epoch none is trained twice and none is skipped, whatever N and M; the global batch, the step
count and the schedule go on."""

from __future__ import annotations

import re

import pytest

from bonsai.observe.metrics import read_metrics
from conftest import assert_each_record_once_per_epoch, base_config, run_train, write_config

LAYOUT = {None: "DDP", "ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "zero3_offload": "ZeRO-3 (optimizer offload)"}


@pytest.mark.parametrize("before, after, micro_after, launches", [
    (2, 1, 4, (None, None)), (1, 2, 2, (None, None)), (2, 3, 2, (None, None)),
    (2, 1, 4, ("zero3", None)),  # ZeRO-3 partitions for 2 ranks, resharded to one plain process
])  # fmt: skip
def test_resuming_on_another_number_of_processes_trains_each_record_once(tmp_path, model_cache, before, after,
                                                                        micro_after, launches):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"].update(max_steps=4, checkpoint_every=2, micro_batch_size=3 if before == 2 and after == 3 else 4,
                        gradient_accumulation_steps=1, weight_decay=0.1)
    cfg["eval"] = {"probes": None}
    cfg["logging"]["wandb"] = {"mode": "disabled"}
    config = write_config(tmp_path / "c.yaml", cfg)
    run_train(config, nproc=before, launch=launches[0])
    rows_per_step = cfg["train"]["micro_batch_size"] * before
    final_step = 4 + 96 // rows_per_step  # ~100 rows of 256 tokens: past the sample's first epoch

    resumed = run_train(config, [f"train.max_steps={final_step}", f"train.micro_batch_size={micro_after}"],
                        nproc=after, launch=launches[1])
    output = resumed.stdout + resumed.stderr
    accumulation = rows_per_step // (micro_after * after)
    assert (f"resuming a {before}-process checkpoint on {after}: global batch {rows_per_step} kept "
            f"({after} x micro-batch {micro_after} x accumulation {accumulation})") in output
    assert f"{before} rank(s)' positions merged and dealt to {after}" in output
    steps = [row["step"] for row in read_metrics(tmp_path / "run") if "train/loss" in row]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == final_step
    assert_each_record_once_per_epoch(tmp_path / "run")
    if launches[0] != launches[1]:
        assert re.search(rf"resharded step_\d+: 33 tensors with their AdamW state \(step \d+\) from "
                         rf"{LAYOUT[launches[0]]} on {before} process\(es\) to {LAYOUT[launches[1]]} on {after} ", output)
