"""Every kind of resume keeps learning: the outcome, not the bookkeeping.

Each case resumes a checkpoint, on another layout or the same one, and trains 10 more steps. For each:
the weights change at every step after the resume (every step is checkpointed and the checkpoints'
weights are compared: DeepSpeed's own consolidation for ZeRO), and the mean train loss of those 10 steps
tracks an uninterrupted run with the same global batch. Where the resume keeps the data order (same
processes, same rows per rank) the losses must agree step by step (fp32, only the order of sums
differs); where it deals the rest of the epoch to another number of ranks the data order changes, and
the window's mean must stay within NOISE_TOL of the reference. Beside that: every record once per epoch,
the global batch in the data log's rows and in every new checkpoint, and the learning rate of each step
equal to the uninterrupted run's.

A source run is an uninterrupted run that checkpoints every step; a case copies it and removes the
checkpoints after the step it resumes from, as a preemption after that step's checkpoint would leave it.
The mutations each case catches are listed in CASES.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (WINDOW, assert_each_record_once_per_epoch, assert_keeps_learning, assert_optimizer_stepped,
                      base_config, run_train, sample_records, step_rows, write_config)

LAYOUT = {None: "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "zero3_offload": "ZeRO-3 (optimizer offload)",
          "fsdp2": "FSDP2"}
GLOBAL_BATCH = 12
STEPS = 15

# (nproc, micro_batch_size, launch file) of each source run; every one has GLOBAL_BATCH rows a step.
SOURCES = {"ddp2": (2, 3, None), "one": (1, 4, None), "zero3": (2, 3, "zero3"), "lora_zero3": (2, 3, "zero3"),
           "lora_dropout": (1, 4, None), "fsdp2": (2, 3, "fsdp2")}


@dataclass(frozen=True)
class Case:
    source: str
    resume_at: int
    nproc: int
    micro: int
    launch: str | None
    same_order: bool  # the resume keeps each rank's rows: compare step by step
    caught: str  # a mutation of the code under which this case fails


CASES = {
    "2to1_odd": Case("ddp2", 5, 1, 3, None, False, "Accelerate's micro-step counter restored (no update after)"),
    "2to1_even": Case("ddp2", 4, 1, 3, None, False, "the config's accumulation kept after a resize"),
    "2to2": Case("ddp2", 5, 2, 3, None, True, "RNG or optimizer state not restored"),
    "1to2": Case("one", 5, 2, 3, None, False, "Accelerate's micro-step counter restored"),
    "2to3": Case("ddp2", 5, 3, 2, None, False, "the config's accumulation kept after a resize"),
    "micro_batch_changed": Case("one", 5, 1, 2, None, True, "Accelerate's micro-step counter restored"),
    "ddp_to_zero2": Case("ddp2", 5, 2, 3, "zero2", True, "a moment dropped in resharding"),
    "ddp_to_zero3": Case("ddp2", 5, 2, 3, "zero3", True, "a moment dropped in resharding"),
    "zero3_to_ddp1": Case("zero3", 5, 1, 3, None, False, "Accelerate's micro-step counter restored"),
    "lora_zero3_to_offload": Case("lora_zero3", 5, 2, 3, "zero3_offload", True, "a moment dropped in resharding"),
    "fsdp2_2to2": Case("fsdp2", 5, 2, 3, "fsdp2", True, "a background write of weights that moved on"),
    "fsdp2_2to3": Case("fsdp2", 5, 3, 2, "fsdp2", False, "the config's accumulation kept after a resize"),
    "fsdp2_to_ddp1": Case("fsdp2", 5, 1, 3, None, False, "a moment dropped in resharding"),
    "ddp_to_fsdp2": Case("ddp2", 5, 2, 3, "fsdp2", True, "a moment dropped in resharding"),
    "fsdp2_to_zero3": Case("fsdp2", 5, 2, 3, "zero3", True, "a moment dropped in resharding"),
}


def source_config(tmp: Path, cache: Path, name: str) -> Path:
    nproc, micro, _ = SOURCES[name]
    cfg = base_config(tmp / name, cache)
    cfg["train"].update(max_steps=STEPS, micro_batch_size=micro, gradient_accumulation_steps=GLOBAL_BATCH // (micro * nproc),
                        weight_decay=0.1, checkpoint_every=1, keep_checkpoints=STEPS + 1)
    if name.startswith("lora"):
        dropout = 0.1 if name == "lora_dropout" else 0.0  # something random after the resume: the RNG matters
        cfg["model"].update(finetune="lora", lora={"r": 8, "alpha": 16, "dropout": dropout})
        cfg["train"]["lr"] = 3e-3  # bench/resume_noise.py --lora: the tiny random base learns most at this rate
    # FSDP2 writes its checkpoints in the background: each case resumes from one of them.
    cfg["train"]["async_checkpoint"] = name == "fsdp2"
    cfg["eval"] = {"every_steps": 0, "probes": None}
    cfg["logging"]["wandb"] = {"mode": "disabled"}
    return write_config(tmp / f"{name}.yaml", cfg)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, model_cache):
    """Each source run once, on first use: (config, run dir)."""
    tmp = tmp_path_factory.mktemp("sources")

    @functools.cache
    def get(name: str) -> tuple[Path, Path]:
        """(config, the finished run's dir, kept aside: the config's output_dir is the cases' to use)."""
        nproc, _, launch = SOURCES[name]
        config = source_config(tmp, model_cache, name)
        run_train(config, nproc=nproc, launch=launch)
        return config, (tmp / name).rename(tmp / f"{name}.finished")

    return get


def preempted_copy(source: Path, run_dir: Path, step: int) -> None:
    """The source's run dir as a preemption right after step `step`'s checkpoint leaves it (at the config's
    output_dir: a run dir cannot move between stretches)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir)
    for checkpoint in (run_dir / "checkpoints").glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    (run_dir / "summary.json").unlink(missing_ok=True)


def assert_rows_per_step(run_dir: Path, steps: range) -> None:
    """The global batch, from what the ranks' data logs say each step trained."""
    per_step: dict[int, int] = {}
    for path in (run_dir / "data_log").glob("rank*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            per_step[row["step"]] = per_step.get(row["step"], 0) + row["rows"]
    assert {s: per_step.get(s) for s in steps} == {s: GLOBAL_BATCH for s in steps}


@pytest.mark.parametrize("name", list(CASES))
def test_a_resumed_run_keeps_learning(name, sources):
    case = CASES[name]
    config, source = sources(case.source)
    run_dir = source.with_suffix("")
    preempted_copy(source, run_dir, case.resume_at)
    overrides = [f"train.micro_batch_size={case.micro}"]
    if case.launch != "fsdp2":
        overrides.append("train.async_checkpoint=false")  # FSDP2's alone
    resumed = run_train(config, overrides, nproc=case.nproc, launch=case.launch)
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{case.resume_at:08d}'}" in resumed.stdout
    source_launch = SOURCES[case.source][2]
    if case.launch != source_launch:  # another strategy: the checkpoint itself was resharded
        assert (f"from {LAYOUT[source_launch]} on {SOURCES[case.source][0]} process(es) to {LAYOUT[case.launch]} on "
                f"{case.nproc} process(es)") in resumed.stdout, resumed.stdout[-3000:]
    steps = sorted(step_rows(run_dir))
    assert steps == list(range(1, STEPS + 1))
    assert_keeps_learning(run_dir, source, case.resume_at, case.same_order, lora=case.source.startswith("lora"),
                          global_batch=GLOBAL_BATCH)
    assert_rows_per_step(run_dir, range(1, STEPS + 1))
    if case.launch is None:  # a DDP checkpoint: AdamW's own count of its updates
        assert_optimizer_stepped(run_dir / "checkpoints" / f"step_{STEPS:08d}", STEPS)
    assert_each_record_once_per_epoch(run_dir)


def test_a_resume_restores_the_random_state(sources):
    """LoRA dropout draws a mask every forward: a resume that did not restore the RNG (every rank's) would
    draw other masks, and the losses after it would differ from the uninterrupted run's in every step."""
    config, source = sources("lora_dropout")
    run_dir = source.with_suffix("")
    preempted_copy(source, run_dir, 5)
    run_train(config)
    resumed, reference = step_rows(run_dir), step_rows(source)
    assert [resumed[s]["train/loss"] for s in range(6, STEPS + 1)] == [reference[s]["train/loss"] for s in range(6, STEPS + 1)]


def _data_with_garbage_at(directory: Path, index: int) -> Path:
    """40 sample records repeated 10 times in file order (the tiny model learns them fast and its loss
    flattens), with one record at `index` whose output is the data's own characters in random order: the
    step that trains it jumps well above the flat curve."""
    import random

    rng = random.Random(0)
    base = sample_records()[:40]
    characters = sorted({c for r in base for c in r["output"] if not c.isspace()})
    garbage = {"id": "garbage", "instruction": "Describe the weather.", "input": "", "category": "open_qa",
               "lang": "en", "output": "".join(rng.choice(characters) for _ in range(150))}
    records = [{**r, "id": f"{r['id']}-{k}"} for k in range(10) for r in base]
    records.insert(index, garbage)
    directory.mkdir(parents=True)
    (directory / "part-00000.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                                encoding="utf-8")
    return directory


STEPS_ROLLBACK = 40


def test_a_rollback_after_a_spike_keeps_learning(tmp_path, model_cache):
    """The monitor rolls back to the last healthy checkpoint and goes on with the data after the spike; the
    steps after it learn as the uninterrupted run (the same data, the spike warned about) does."""
    data = _data_with_garbage_at(tmp_path / "data", 330)

    def config(name: str, on_spike: str) -> Path:
        cfg = base_config(tmp_path / name, model_cache, data)
        cfg["data"].update(shuffle_window=1, pack_window=0, eval_fraction=0.0)
        cfg["train"].update(max_steps=STEPS_ROLLBACK, micro_batch_size=4, gradient_accumulation_steps=1, lr=3e-3,
                            checkpoint_every=1, keep_checkpoints=40)
        # A short window: the noise comes from the flat part of the curve, where the record's second epoch
        # (step ~28) stands out ~4.5 robust sigmas; its first (step ~13) is lost in the fast early fall.
        cfg["monitor"] = {"window": 8, "warmup_steps": 0, "loss_z": 3.0, "on_loss_spike": on_spike,
                          "on_grad_spike": "warn", "trend_window": 0}
        cfg["eval"] = {"every_steps": 0, "probes": None}
        cfg["logging"]["wandb"] = {"mode": "disabled"}
        return write_config(tmp_path / f"{name}.yaml", cfg)

    run_train(config("reference", "warn"))
    rolled = run_train(config("rolled", "rollback"))
    back = [line for line in rolled.stdout.splitlines() if "rolled back to step_" in line]
    assert len(back) == 1, rolled.stdout[-3000:]
    target = int(back[0].split("rolled back to step_")[1][:8])
    spikes = [json.loads(l) for l in (tmp_path / "rolled" / "events.jsonl").read_text().splitlines()]
    assert [e["action"] for e in spikes] == ["rollback"] and target <= spikes[0]["step"] - 2  # confirmed by a clean step
    assert target + WINDOW <= STEPS_ROLLBACK
    assert_keeps_learning(tmp_path / "rolled", tmp_path / "reference", target, same_order=False)
    assert_optimizer_stepped(tmp_path / "rolled" / "checkpoints" / f"step_{STEPS_ROLLBACK:08d}", STEPS_ROLLBACK)
