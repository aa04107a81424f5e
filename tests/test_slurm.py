"""Bonsai on SLURM, for real: slurm/local_cluster.sh starts munge, slurmctld and two slurmd "nodes" on
this machine; jobs go through `bonsai slurm submit` (sbatch) and are watched with scontrol."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonsai.observe.metrics import read_metrics
from conftest import (NOISE_TOL, ROOT, WINDOW, assert_each_record_once_per_epoch, assert_optimizer_stepped, base_config,
                      losses, subprocess_env, weights, write_config)

CLUSTER_SCRIPT = ROOT / "slurm" / "local_cluster.sh"
STEPS = 60
JOB_TIMEOUT_S = 240
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def _slurm_missing() -> list[str]:
    return [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(b, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    """The environment that talks to a fresh local cluster (installed first if it can be)."""
    if os.geteuid() != 0:
        pytest.skip("SLURM's daemons need root here (slurmd runs jobs as their user); run the tests as root")
    if _slurm_missing() and shutil.which("apt-get"):
        subprocess.run([str(CLUSTER_SCRIPT), "install"], capture_output=True, timeout=600)
    if missing := _slurm_missing():
        pytest.skip(f"SLURM cannot be installed here ({', '.join(missing)} missing and apt-get could not add them)")
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(CLUSTER_SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, f"local cluster did not start:\n{started.stdout}\n{started.stderr}"
    env = subprocess_env()
    env["SLURM_CONF"] = str(directory / "slurm.conf")
    yield env
    subprocess.run([str(CLUSTER_SCRIPT), "stop", str(directory)], capture_output=True, timeout=120)


def _config(tmp_path: Path, cache: Path, name: str, steps: int = STEPS) -> Path:
    cfg = base_config(tmp_path / name, cache)
    cfg["train"].update(max_steps=steps, micro_batch_size=2, log_every=1)
    cfg["eval"] = {"probes": None}
    # Both "nodes" of the local cluster share this machine's cores, so each would take all of them and
    # the layouts would run different thread counts (same losses to ~1e-7, not bit for bit): pin one.
    cfg["distributed"]["threads_per_process"] = 1
    return write_config(tmp_path / f"{name}.yaml", cfg)


def _submit(env: dict, config: Path, nodes: int, procs: int, *options: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "bonsai.cli", "slurm", "submit", str(config), "--nodes", str(nodes),
         "--gpus-per-node", "0", "--procs-per-node", str(procs), *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[2].rstrip(":")  # "submitted job 12: ..."


def _job(env: dict, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _log(run_dir: Path, job_id: str) -> str:
    path = run_dir / f"slurm-{job_id}.log"
    return path.read_text(errors="replace") if path.exists() else "(no log yet)"


def _wait_job(env: dict, job_id: str, run_dir: Path, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(env, job_id)
        if job.get("JobState") in FINAL_STATES:
            return job
        time.sleep(0.1)
    subprocess.run(["scancel", "--full", job_id], env=env, timeout=30)
    raise AssertionError(f"job {job_id} not done after {timeout} s ({job.get('JobState')}); log:\n{_log(run_dir, job_id)[-6000:]}")


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].count('"train/loss"')  # complete lines only: the last may be half-written


def _wait_for_step(run_dir: Path, step: int, env: dict, job_id: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _steps_logged(run_dir) >= step:
            return
        if _job(env, job_id).get("JobState") in FINAL_STATES:
            raise AssertionError(f"job {job_id} ended before step {step}:\n{_log(run_dir, job_id)[-6000:]}")
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached in {timeout} s:\n{_log(run_dir, job_id)[-6000:]}")


def _assert_completed(job: dict, run_dir: Path, job_id: str) -> None:
    assert job["JobState"] == "COMPLETED", f"job {job_id}: {job['JobState']}\n{_log(run_dir, job_id)[-6000:]}"


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory, tiny_dir, model_cache) -> dict[int, float]:
    """1 node x 2 processes, uninterrupted: the losses every other layout must reproduce."""
    tmp = tmp_path_factory.mktemp("slurm-reference")
    config = _config(tmp, model_cache, "one_node")
    job_id = _submit(slurm, config, nodes=1, procs=2)
    _assert_completed(_wait_job(slurm, job_id, tmp / "one_node"), tmp / "one_node", job_id)
    log = _log(tmp / "one_node", job_id)
    assert "1 node(s) (n1) x 2 process(es)" in log and "training finished" in log, log[-3000:]
    return losses(tmp / "one_node")


def test_one_node_two_processes_trains(reference):
    assert sorted(reference) == list(range(1, STEPS + 1))
    curve = [reference[s] for s in sorted(reference)]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.5, curve


def test_two_nodes_one_process_each_match_one_node(slurm, reference, tmp_path, model_cache):
    config = _config(tmp_path, model_cache, "two_nodes")
    job_id = _submit(slurm, config, nodes=2, procs=1)
    job = _wait_job(slurm, job_id, tmp_path / "two_nodes")
    _assert_completed(job, tmp_path / "two_nodes", job_id)
    assert job["NodeList"] == "n[1-2]"
    # The same 2 ranks, now one per node (machine_rank from SLURM_NODEID): the same run.
    assert losses(tmp_path / "two_nodes") == reference


def test_preempted_job_checkpoints_requeues_and_resumes_exactly(slurm, reference, tmp_path, model_cache):
    run_dir = tmp_path / "preempted"
    config = _config(tmp_path, model_cache, "preempted")
    job_id = _submit(slurm, config, nodes=1, procs=2)
    _wait_for_step(run_dir, 3, slurm, job_id)
    # What `--signal=B:USR1@grace` does before the time limit: signal the batch shell only.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=slurm, check=True, timeout=30)
    job = _wait_job(slurm, job_id, run_dir)
    _assert_completed(job, run_dir, job_id)
    log = _log(run_dir, job_id)
    assert job["Restarts"] == "1", log[-6000:]
    stopped = [json.loads(line.split("training checkpointed and stopped: ", 1)[1])
               for line in log.splitlines() if "training checkpointed and stopped: " in line]
    assert len(stopped) == 1 and 3 <= stopped[0]["step"] < STEPS, log[-6000:]
    assert "stop file" in stopped[0]["reason"], stopped  # the batch shell's request reached the ranks
    assert f"resumed from {stopped[0]['checkpoint']} at step {stopped[0]['step']}" in log
    # Every step exactly once in the metrics, with the uninterrupted run's loss.
    steps = [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]
    assert steps == list(range(1, STEPS + 1))
    assert losses(run_dir) == reference
    assert_learned_after(run_dir, stopped[0]["checkpoint"])
    # W&B (offline here): the requeued run continued the same run id.
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs), offline_runs


def assert_learned_after(run_dir: Path, checkpoint: str) -> None:
    """Every update after the resume was applied (AdamW's own count in the final, one-process-written
    checkpoint) and moved the weights away from the checkpoint the job stopped at."""
    final = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert_optimizer_stepped(final, STEPS)
    before, after = weights(Path(checkpoint)), weights(final)
    assert max((after[n] - before[n]).abs().max().item() for n in after) > 0


def _pids_of(job_id: str, rank: int) -> list[int]:
    """The training process of `rank` in this job (found by its environment, as an operator would)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(v.split("=", 1) for v in environ.read_bytes().decode(errors="replace").split("\0") if "=" in v)
            cmdline = (environ.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("RANK") == str(rank) and "bonsai.cli" in cmdline:
            found.append(int(environ.parent.name))
    return found


def test_a_dead_task_fails_the_job_with_a_clear_line(slurm, tmp_path, model_cache):
    run_dir = tmp_path / "dies"
    config = _config(tmp_path, model_cache, "dies", steps=100_000)
    job_id = _submit(slurm, config, nodes=2, procs=1)
    _wait_for_step(run_dir, 2, slurm, job_id)
    victims = _pids_of(job_id, rank=1)
    assert victims, "rank 1's process not found"
    for pid in victims:
        os.kill(pid, 9)
    job = _wait_job(slurm, job_id, run_dir, timeout=120)  # no hang: the survivor must not wait for ever
    log = _log(run_dir, job_id)
    assert job["JobState"] == "FAILED", log[-6000:]
    assert job["Restarts"] == "0"
    assert "FAILED: training exited with code" in log and "not requeued" in log, log[-6000:]
    assert not _pids_of(job_id, rank=0), "rank 0 outlived its job"


# ZeRO-3 partitions resharded 2 -> 1 process: tests/test_resume_matrix.py (zero3_to_ddp1), the same path
# without SLURM around it; here the sharded side is FSDP2's distributed checkpoint.
@pytest.mark.parametrize("launch", [None, "launch/multi_node_fsdp2.yaml"])
def test_preempted_on_two_nodes_resumes_on_one(slurm, reference, tmp_path, model_cache, launch):
    """The cluster gives back fewer nodes than the job had: the job stops on 2 nodes (not requeued, as
    after its last allowed restart) and the same config, resubmitted on 1 node, finishes the run with
    every step once, every record once per epoch, and one W&B run. Under the shipped multi-node FSDP2
    launch file the 2 nodes' distributed checkpoint is resharded for the one plain process."""
    run_dir = tmp_path / "shrunk"
    config = _config(tmp_path, model_cache, "shrunk")
    first = _submit(slurm, config, 2, 1, "--max-restarts", "0", *(("--launch", launch) if launch else ()))
    _wait_for_step(run_dir, 3, slurm, first)
    subprocess.run(["scancel", "--batch", "--signal=USR1", first], env=slurm, check=True, timeout=30)
    _wait_job(slurm, first, run_dir)
    assert "NOT requeued" in _log(run_dir, first), _log(run_dir, first)[-6000:]
    stopped = json.loads((run_dir / "stopped.json").read_text())

    second = _submit(slurm, config, nodes=1, procs=1)
    job = _wait_job(slurm, second, run_dir)
    _assert_completed(job, run_dir, second)
    log = _log(run_dir, second)
    assert "resuming a 2-process checkpoint on 1: global batch 4 kept (1 x micro-batch 2 x accumulation 2)" in log, log[-6000:]
    assert f"resumed from {stopped['checkpoint']} at step {stopped['step']}" in log
    assert ("from FSDP2 on 2 process(es) to DDP on 1 process(es)" in log) == bool(launch), log[-6000:]
    steps = [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]
    assert steps == list(range(1, STEPS + 1))
    assert_each_record_once_per_epoch(run_dir)
    assert_learned_after(run_dir, stopped["checkpoint"])
    # The outcome beside the bookkeeping: the 10 steps after the resume learn as the uninterrupted 2-process
    # run (same global batch of 4) did. Four rows a step are noisier than the matrix's 12: twice its band.
    after = losses(run_dir)
    window = range(stopped["step"] + 1, stopped["step"] + WINDOW + 1)
    gap = sum(after[s] - reference[s] for s in window) / WINDOW
    assert abs(gap) < 2 * NOISE_TOL, (gap, [after[s] for s in window], [reference[s] for s in window])
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs), offline_runs
