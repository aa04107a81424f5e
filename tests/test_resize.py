"""Resuming a run on another number of processes, end to end: `bonsai train` on N processes, then the
same command (train.max_steps raised, as a user continues a run) on M, through the shipped DDP launch
file. Every record the two stretches trained is read back from RUN_DIR/data_log: within an epoch none is
trained twice and none is skipped, whatever N and M; the global batch, the step count and the schedule
go on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bonsai.data.records import in_eval_split
from conftest import base_config, run_train, sample_records, write_config
from bonsai.observe.metrics import read_metrics


def _trained(run_dir: Path) -> dict[int, Counter]:
    """(epoch -> record id counts) over every rank's data log."""
    per_epoch: dict[int, Counter] = {}
    for path in sorted((run_dir / "data_log").glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for record, epoch in zip(row["records"], row["epochs"]):
                per_epoch.setdefault(epoch, Counter())[record] += 1
    return per_epoch


def _check_each_record_once(run_dir: Path) -> None:
    train_ids = {r["id"] for r in sample_records() if not in_eval_split(r["id"], 0.05)}
    trained = _trained(run_dir)
    final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    # Epochs every rank has left are complete; ranks packed unevenly may be an epoch apart.
    complete = min(p["epoch"] for p in json.loads((final / "trainer_state.json").read_text())["data_positions"])
    assert complete >= 1, "the test should cross an epoch boundary after the resume"
    for epoch, counts in trained.items():
        assert max(counts.values()) == 1, f"epoch {epoch}: trained twice: {[r for r, n in counts.items() if n > 1]}"
        assert set(counts) <= train_ids
        if epoch < complete:
            assert set(counts) == train_ids, f"epoch {epoch}: never trained: {sorted(train_ids - set(counts))[:10]}"


@pytest.mark.parametrize("before, after, micro_after", [(2, 1, 4), (1, 2, 2), (2, 3, 2)])
def test_resuming_on_another_number_of_processes_trains_each_record_once(tmp_path, model_cache, before, after,
                                                                        micro_after):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"].update(max_steps=4, checkpoint_every=2, micro_batch_size=3 if before == 2 and after == 3 else 4,
                        gradient_accumulation_steps=1, weight_decay=0.1)
    cfg["eval"] = {"probes": None}
    cfg["logging"]["wandb"] = {"mode": "disabled"}
    config = write_config(tmp_path / "c.yaml", cfg)
    run_train(config, nproc=before)
    rows_per_step = cfg["train"]["micro_batch_size"] * before
    final_step = 4 + 96 // rows_per_step  # ~100 rows of 256 tokens: past the sample's first epoch

    resumed = run_train(config, [f"train.max_steps={final_step}", f"train.micro_batch_size={micro_after}"],
                        nproc=after)
    output = resumed.stdout + resumed.stderr
    accumulation = rows_per_step // (micro_after * after)
    assert (f"resuming a {before}-process checkpoint on {after}: global batch {rows_per_step} kept "
            f"({after} x micro-batch {micro_after} x accumulation {accumulation})") in output
    assert f"{before} rank(s)' positions merged and dealt to {after}" in output
    steps = [row["step"] for row in read_metrics(tmp_path / "run") if "loss" in row]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == final_step
    _check_each_record_once(tmp_path / "run")
