"""Shared test fixtures: a tiny Phi built once per session, configs in temp dirs, real launches."""

from __future__ import annotations

import json
import statistics
from collections import Counter
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
LAUNCH_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_dir(model_cache) -> Path:
    from bonsai.config import TinyPhiConfig
    from bonsai.model.source import tiny_phi_for

    return tiny_phi_for(str(SAMPLE), TinyPhiConfig(), model_cache, seed=42)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from bonsai.config import ModelConfig
    from bonsai.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir)))


def sample_records() -> list[dict]:
    return [json.loads(line) for p in sorted(SAMPLE.glob("*.jsonl")) for line in p.read_text().splitlines()]


def write_shards(directory: Path, records: list[dict], shards: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        lines = [json.dumps(r, ensure_ascii=False) for r in records[s::shards]]
        (directory / f"part-{s:05d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def base_config(run_dir: Path, cache: Path, data: Path = SAMPLE) -> dict:
    """A small, fast config: tiny Phi, fp32, no progress bar."""
    return {
        "model": {"name_or_path": "tiny-phi", "cache_dir": str(cache)},
        "data": {"path": str(data), "max_length": 256, "packing": True, "eval_fraction": 0.05},
        "train": {
            "output_dir": str(run_dir),
            "seed": 7,
            "max_steps": 8,
            "micro_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "lr": 2e-3,
            "warmup_steps": 2,
            "precision": "fp32",
        },
        "distributed": {"timeout_s": 60},
        "logging": {"progress_bar": False},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(config: Path, overrides: list[str] = (), nproc: int = 1, launch: str | None = None,
                  port: int | None = None) -> list[str]:
    """`bonsai train` as a user runs it: directly for one process, else `accelerate launch` with one of
    the shipped launch/ configs as it is (`launch` names it, e.g. "zero3"; "ddp" by default). Only the
    process count and a free port are given on the command line."""
    if nproc == 1 and launch is None:
        return [sys.executable, "-m", "bonsai.cli", "train", str(config), *overrides]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / f"{launch or 'ddp'}.yaml"),
        "--num_processes", str(nproc), "--main_process_port", str(port or free_port()),
        "-m", "bonsai.cli", "train", str(config), *overrides,
    ]  # fmt: skip


def subprocess_env() -> dict:
    env = dict(os.environ)
    # Bonsai gives each process its share of the cores, as it does for users. With test files run side
    # by side (pytest-xdist), a worker's share is its part of the machine: a bare `bonsai train` is told
    # it by OMP_NUM_THREADS, as a user would tell it (a launch divides accelerate's share itself). With
    # both cores per process beside a busy second worker, OpenMP's spinning barriers made `make demo`
    # 5x slower (26 s alone, 129 s).
    env.pop("OMP_NUM_THREADS", None)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
    env.update({"PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"})
    return env


def run_train(config: Path, overrides: list[str] = (), nproc: int = 1, check: bool = True,
              launch: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_command(config, overrides, nproc, launch),
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"bonsai train exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    from bonsai.observe.metrics import read_metrics

    return {row["step"]: row["train/loss"] for row in read_metrics(run_dir) if "train/loss" in row}


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited {proc.returncode} before step {step}")
        if metrics.exists() and any(json.loads(l).get("step", 0) >= step for l in metrics.read_text().splitlines() if l):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _trained(run_dir: Path) -> dict[int, Counter]:
    """(epoch -> record id counts) over every rank's data log."""
    per_epoch: dict[int, Counter] = {}
    for path in sorted((run_dir / "data_log").glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for record, epoch in zip(row["records"], row["epochs"]):
                per_epoch.setdefault(epoch, Counter())[record] += 1
    return per_epoch


def assert_each_record_once_per_epoch(run_dir: Path, eval_fraction: float = 0.05) -> None:
    """From RUN_DIR/data_log: within an epoch no record was trained twice, and every epoch all ranks
    have left holds every train record of the sample."""
    from bonsai.data.records import in_eval_split

    train_ids = {r["id"] for r in sample_records() if not in_eval_split(r["id"], eval_fraction)}
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


# --- outcomes after a resume or a rollback (tests/test_resume_matrix.py, test_slurm.py) ------------------

WINDOW = 10  # steps after a resume whose outcome is checked
# bench/resume_noise.py: over 6 data orders the mean loss of steps 6-15 has stdev 0.021 (range 0.046);
# a model that stops learning at step 5 sits 0.72 above it. 0.10 is ~5 stdev and 1/7 of the signal.
NOISE_TOL = 0.10
# Same data order: only the order of fp32 sums differs (DDP vs ZeRO, micro-batch split): seen <1e-5.
SAME_ORDER_TOL = 1e-4


def step_rows(run_dir: Path) -> dict[int, dict]:
    from bonsai.observe.metrics import read_metrics

    return {r["step"]: r for r in read_metrics(run_dir) if "train/loss" in r}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trainable weights a checkpoint holds, whole, read with the writers' own tools."""
    if (checkpoint / "pytorch_model").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="pytorch_model",
                                                        exclude_frozen_parameters=True)
    if (checkpoint / "dcp").is_dir():  # FSDP2: DCP's own converter joins the ranks' shards
        import tempfile

        import torch
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(checkpoint / "dcp"), f"{tmp}/whole.pt")
            return torch.load(f"{tmp}/whole.pt", weights_only=True)["model"]
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


def assert_keeps_learning(run_dir: Path, reference: Path, resume_at: int, same_order: bool, lora: bool = False,
                          global_batch: int | None = None) -> None:
    """The outcome after a resume (or a rollback) to step `resume_at`, against `reference`, an uninterrupted
    run with the same global batch: every step of the WINDOW after it changes the weights (from the
    checkpoint of every step), each step's learning rate is the reference's, and the window's mean loss is
    within NOISE_TOL of the reference's (step by step within SAME_ORDER_TOL when the data order is kept)."""
    window = range(resume_at + 1, resume_at + WINDOW + 1)
    checkpoints = {s: run_dir / "checkpoints" / f"step_{s:08d}" for s in range(resume_at, resume_at + WINDOW + 1)}
    before = weights(checkpoints[resume_at])
    for step in window:
        after = weights(checkpoints[step])
        names = [n for n in after if "lora_" in n] if lora else list(after)
        moved = max((after[n] - before[n]).abs().max().item() for n in names)
        assert moved > 0, f"step {step}: no weight moved since step {step - 1} (the update was not applied)"
        state = json.loads((checkpoints[step] / "trainer_state.json").read_text())
        assert global_batch is None or state["global_batch"] == global_batch, (step, state["global_batch"])
        before = after
    rows, ref = step_rows(run_dir), step_rows(reference)
    for step in window:
        assert rows[step]["train/learning_rate"] == pytest.approx(ref[step]["train/learning_rate"], rel=1e-6), step
    losses = [rows[s]["train/loss"] for s in window]
    expected = [ref[s]["train/loss"] for s in window]
    if same_order:
        for step, got, want in zip(window, losses, expected):
            assert abs(got - want) < SAME_ORDER_TOL, (step, got, want)
    gap = statistics.fmean(losses) - statistics.fmean(expected)
    assert abs(gap) < NOISE_TOL, (f"mean loss of steps {window.start}-{window.stop - 1}: {statistics.fmean(losses):.3f} "
                                  f"resumed, {statistics.fmean(expected):.3f} uninterrupted")


def assert_optimizer_stepped(checkpoint: Path, updates: int) -> None:
    """AdamW's own count of the updates it made (torch writes it), in a DDP checkpoint: every step not
    skipped must be one."""
    import torch

    state = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=True)["state"]
    counts = {int(s["step"]) for s in state.values()}
    assert counts == {updates}, f"{checkpoint}: AdamW made {counts} update(s), {updates} expected"
