"""`bonsai slurm submit` without a cluster: option checks, the rendered script, ports, and the stop
conditions (stop file, deadline) the batch script relies on."""

import json
import socket
import subprocess
import sys
import time

import pytest

from bonsai.config import ConfigError, load_config
from bonsai.train.resume.preemption import STOPPED_FILE, StopRequest, deadline_reached
from bonsai.cluster.slurm import PORT_BASE, PORT_SPAN, SubmitOptions, check_options, job_port, time_limit_seconds
from conftest import ROOT, base_config, run_train, write_config


@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("5:30", 330), ("2:00:00", 7200), ("1-0", 86400), ("1-2:30", 95400), ("2-00:00:10", 172810),
])  # fmt: skip
def test_time_limit_formats(text, seconds):
    assert time_limit_seconds(text) == seconds


def test_bad_time_limit_is_refused():
    with pytest.raises(ConfigError, match="expected minutes"):
        time_limit_seconds("4h")


@pytest.fixture
def config_path(tmp_path):
    cfg = base_config(tmp_path / "run", tmp_path / "cache")
    cfg["train"].update(global_batch_size=8, gradient_accumulation_steps=None)
    return write_config(tmp_path / "c.yaml", cfg)


@pytest.mark.parametrize("options, message", [
    (dict(nodes=1, gpus_per_node=0), "needs --procs-per-node"),
    (dict(nodes=0, gpus_per_node=1), "at least 1"),
    (dict(nodes=1, gpus_per_node=1, time="5", grace_s=300), "not longer than --grace"),
    (dict(nodes=1, gpus_per_node=1, launch_config="launch/nope.yaml"), "no such file"),
    (dict(nodes=3, gpus_per_node=1), "not divisible"),  # global batch 8 over 3 x micro-batch 4
])  # fmt: skip
def test_options_that_would_fail_on_the_cluster_are_refused_at_submit(config_path, options, message):
    with pytest.raises(ConfigError, match=message):
        check_options(SubmitOptions(**options), load_config(config_path))


def test_dry_run_renders_a_complete_job(config_path, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bonsai.cli", "slurm", "submit", str(config_path), "train.lr=1e-3", "--nodes", "2",
         "--gpus-per-node", "1", "--time", "1:00:00", "--grace", "120", "--launch", "launch/zero3.yaml",
         "--partition", "gpu", "--sbatch-arg=--account=ml", "--dry-run", "train.seed=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    options = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    run_dir = tmp_path / "run"
    assert options == [
        "--job-name=bonsai-run", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1",
        f"--output={run_dir}/slurm-%j.log", "--open-mode=append", "--signal=B:USR1@120", "--requeue",
        f"--chdir={ROOT}", "--partition=gpu", "--time=1:00:00", "--account=ml",
    ]
    assert "PROCS_PER_NODE=1\n" in script and f"LAUNCH_CONFIG={ROOT}/launch/zero3.yaml\n" in script
    assert f"# would run: sbatch --parsable {run_dir}/slurm/train.sbatch {config_path} train.lr=1e-3 train.seed=3" in script
    assert not run_dir.exists()  # a dry run writes nothing
    body = script.rsplit("# would run:", 1)[0]
    assert subprocess.run(["bash", "-n"], input=body, text=True).returncode == 0


def test_job_ports_differ_between_jobs_and_restarts_and_skip_busy_ones():
    ports = {job_port(job, restart) for job in range(100, 110) for restart in range(3)}
    assert len(ports) == 30 and all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)
    first = job_port(4242, 0)
    with socket.socket() as busy:
        busy.bind(("", first))
        busy.listen()
        assert job_port(4242, 0) == first + 1


def test_deadline_leaves_room_for_the_longest_step_and_checkpoint():
    now = 1000.0
    assert not deadline_reached(now, None, 5, 5)
    assert not deadline_reached(now, now + 100, longest_step_s=10, longest_checkpoint_s=20, margin_s=60)
    assert deadline_reached(now, now + 89, longest_step_s=10, longest_checkpoint_s=20, margin_s=60)


def test_stop_file_and_deadline_from_the_environment(tmp_path, monkeypatch):
    stop_file = tmp_path / "stop_requested"
    monkeypatch.setenv("BONSAI_STOP_FILE", str(stop_file))
    monkeypatch.setenv("BONSAI_DEADLINE", str(time.time() + 3600))
    stop = StopRequest.from_env()
    assert stop.reason is None
    stop_file.touch()
    assert stop.reason == f"stop file {stop_file}"
    stop_file.unlink()
    stop.note_checkpoint(3600)  # a checkpoint as long as the time left: stop now
    assert stop.reason.startswith("job ends at")


def test_training_stops_and_checkpoints_before_the_deadline(tmp_path, model_cache, monkeypatch):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", base_config(run_dir, model_cache))
    monkeypatch.setenv("BONSAI_DEADLINE", str(int(time.time())))  # the job's end time has come
    proc = run_train(config, check=False)
    assert proc.returncode == 75, proc.stderr[-3000:]
    stopped = json.loads((run_dir / STOPPED_FILE).read_text())
    assert stopped["step"] == 0 and stopped["reason"].startswith("rank 0: job ends at")
    assert (run_dir / "checkpoints" / "step_00000000" / "trainer_state.json").exists()
