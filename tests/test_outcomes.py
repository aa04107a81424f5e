"""A run that goes wrong never ends as a success (each case failed silently before: exit 0, `done:`).

Divergence stops the run from the first steps, warm-up included, and nothing is saved from a state the
monitor condemned; a resume refuses data that changed under its saved byte offsets (or, when asked,
starts a new epoch over it); the final model is written aside and renamed, a full disk is the one-line
exit 5 and a rerun writes the model again; `bonsai report` writes elsewhere on request and says when a run
is still training."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, base_config, losses, run_train, subprocess_env, write_config


def _config(tmp_path: Path, model_cache: Path, name: str = "run", data: Path = SAMPLE, **train) -> Path:
    cfg = base_config(tmp_path / name, model_cache, data)
    cfg["train"].update(train)
    cfg["eval"] = {"probes": None, "every_steps": 0}
    cfg["logging"]["wandb"] = {"mode": "disabled"}
    return write_config(tmp_path / f"{name}.yaml", cfg)


def _steps(path: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (path / "checkpoints").glob("step_*"))


def test_divergence_in_warm_up_stops_the_run_and_keeps_the_last_healthy_checkpoint(tmp_path, model_cache):
    """lr 5 with 39 warm-up steps: the loss climbs 7.7 -> 551 while the spike detector is still warming up.
    Before: 20 steps skipped, exit 0, the good early checkpoints rotated out."""
    config = _config(tmp_path, model_cache, lr=5.0, warmup_steps=39, max_steps=40, checkpoint_every=2,
                     keep_checkpoints=1)
    proc = run_train(config, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = next(l for l in proc.stderr.splitlines() if "training diverged" in l)
    stopped = int(line.split("step ")[1].split(":")[0])
    assert stopped < 20, line  # caught in the warm-up, long before the detector would arm
    healthy = tmp_path / "run" / "checkpoints" / f"step_{_steps(tmp_path / 'run')[0]:08d}"
    assert f"Last healthy checkpoint: {healthy}" in line
    assert _steps(tmp_path / "run")[0] < stopped - 1  # its weights were confirmed by a clean step
    assert not (tmp_path / "run" / "model").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["healthy"] is False and summary["last_healthy_checkpoint"] == str(healthy)


def test_rollback_goes_to_the_last_healthy_checkpoint_never_to_one_of_the_diverged_state(tmp_path, model_cache):
    """lr 50: the update of step 2 blows the weights up, step 3's loss is non-finite. Before: every rollback
    landed on a checkpoint written while every step was being skipped."""
    config = _config(tmp_path, model_cache, lr=50.0, max_steps=40, checkpoint_every=1, keep_checkpoints=1)
    cfg_overrides = ["monitor.on_nonfinite=rollback", "monitor.on_divergence=rollback"]
    proc = run_train(config, cfg_overrides, check=False)
    assert proc.returncode == 3 and "after 3 rollback(s) (monitor.max_rollbacks)" in proc.stderr, proc.stderr[-3000:]
    targets = [l.split("rolled back to ")[1].split(" ")[0] for l in proc.stdout.splitlines() if "rolled back to" in l]
    events = [json.loads(l) for l in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    first_bad = min(e["step"] for e in events)
    assert len(targets) == 3 and all(int(t[5:]) < first_bad - 1 for t in targets), (targets, first_bad)
    assert _steps(tmp_path / "run")[0] == int(targets[0][5:])  # rotation (keep 1) kept the healthy one


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory, model_cache):
    """A run of 6 steps over a copy of the sample data, finished (built once), and a pristine copy of both."""
    tmp = tmp_path_factory.mktemp("stopped")
    data = tmp / "data"
    shutil.copytree(SAMPLE, data, ignore=shutil.ignore_patterns("*.py"))
    config = _config(tmp, model_cache, data=data, max_steps=6, checkpoint_every=3)
    run_train(config)
    pristine = tmp_path_factory.mktemp("pristine")
    for name in ("data", "run"):
        shutil.copytree(tmp / name, pristine / name)
    return config, tmp, pristine


@pytest.fixture
def stopped_run(finished_once):
    """The finished run and its data as the fixture left them (another test's changes undone); the config's
    paths cannot move, so the copy goes back to the same place. Returns (config, data dir, run dir)."""
    config, tmp, pristine = finished_once
    for name in ("data", "run"):
        shutil.rmtree(tmp / name, ignore_errors=True)
        shutil.copytree(pristine / name, tmp / name)
    return config, tmp / "data", tmp / "run"


def _edit_before_offset(data: Path) -> str:
    path = data / "part-00001.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[2])
    record["output"] += " (checked)"
    lines[2] = json.dumps(record, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    return f"{path}: edited"


def _append(data: Path) -> str:
    path = data / "part-00001.jsonl"
    extra = [json.loads(l) for l in (data / "part-00000.jsonl").read_text(encoding="utf-8").splitlines()[:30]]
    with path.open("a", encoding="utf-8") as f:
        for r in extra:
            f.write(json.dumps({**r, "id": f"appended-{r['id']}"}, ensure_ascii=False) + "\n")
    return f"{path}: appended to"


def _add(data: Path) -> str:
    shutil.copy(data / "part-00000.jsonl", data / "part-00009.jsonl")
    return f"{data / 'part-00009.jsonl'}: added"


def _remove(data: Path) -> str:
    (data / "part-00002.jsonl").unlink()
    return f"{data / 'part-00002.jsonl'}: removed"


@pytest.mark.parametrize("change", [_edit_before_offset, _append, _add, _remove])
def test_a_resume_refuses_data_changed_under_it_naming_the_shard(stopped_run, change):
    config, data, _ = stopped_run
    said = change(data)
    proc = run_train(config, ["train.max_steps=12"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert said in proc.stderr and "data.on_change=new_epoch" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "data:" not in proc.stdout  # refused before the scan


def test_new_epoch_over_changed_data_trains_each_record_once_with_the_run_s_own_tokenizer(stopped_run):
    config, data, run_dir = stopped_run
    _append(data)
    before = losses(run_dir)
    tokenizer = (run_dir / "tokenizer" / "tokenizer.json").read_text()
    proc = run_train(config, ["train.max_steps=40", "data.on_change=new_epoch"])
    assert "data.on_change=new_epoch: epoch 0 ends here" in proc.stdout
    # The tiny model's tokenizer was trained on the old data: it stays the run's (a new one would jump the loss).
    assert (run_dir / "model" / "tokenizer.json").read_text() == tokenizer
    after = losses(run_dir)
    assert abs(after[7] - before[6]) < 0.5, (before[6], after[7])
    trained: dict[int, list[str]] = {}
    for line in (run_dir / "data_log" / "rank0.jsonl").read_text().splitlines():
        row = json.loads(line)
        for rid, epoch in zip(row["records"], row["epochs"]):
            trained.setdefault(epoch, []).append(rid)
    assert all(len(ids) == len(set(ids)) for ids in trained.values())  # no record twice within an epoch
    assert min(trained) == 0 and any(r.startswith("appended-") for r in trained[1])


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")


def test_a_full_disk_in_the_final_save_is_exit_5_and_a_rerun_writes_the_model(tmp_path, model_cache):
    """The final checkpoint fits in 13 MB, the model after it does not. Before: a safetensors traceback,
    exit 1, model/ holding only config.json, and a rerun said 'nothing to do'."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "13m")
    try:
        config = _config(tmp_path, model_cache, name="c", max_steps=4)
        overrides = [f"train.output_dir={disk / 'run'}"]
        proc = run_train(config, overrides, check=False)
        assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "no space left on device while writing the final model" in proc.stderr
        assert f"the final checkpoint {disk / 'run' / 'checkpoints' / 'step_00000004'} is complete" in proc.stderr
        assert not (disk / "run" / "model").exists() and not list((disk / "run").glob(".tmp-*"))
        subprocess.run(["mount", "-o", "remount,size=40m", str(disk)], check=True)
        again = run_train(config, overrides)
        assert "its model is not whole" in again.stdout and "done:" in again.stdout
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(disk / "run" / "model")
        assert "nothing to do" in run_train(config, overrides).stdout
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_the_space_a_first_checkpoint_needs_is_estimated(tmp_path, model_cache):
    """Before any checkpoint exists the message said 'needed ~0 MiB'; a checkpoint of this model is ~10.5 MiB."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "6m")
    try:
        config = _config(tmp_path, model_cache, name="c", max_steps=4, checkpoint_every=2)
        proc = run_train(config, [f"train.output_dir={disk / 'run'}"], check=False)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert proc.returncode == 5, proc.stderr[-3000:]
    needed = float(proc.stderr.split("needed ~")[1].split(" MiB")[0])
    assert 9 <= needed <= 12, proc.stderr


def _report(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsai.cli", "report", str(run_dir), *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)


def test_report_writes_elsewhere_on_request_and_says_a_run_is_live_and_a_healthy_run_says_so(tmp_path, model_cache):
    """Before: an OSError traceback on a read-only run dir; on a live run an empty suspect table, unexplained."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "40m")
    try:
        run_train(_config(tmp_path, model_cache, name="c", max_steps=4), [f"train.output_dir={disk / 'run'}"])
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        refused = _report(disk / "run")
        out = _report(disk / "run", "--out", str(tmp_path / "elsewhere"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "cannot write the report into" in refused.stderr and "pass --out DIR" in refused.stderr
    assert out.returncode == 0 and (tmp_path / "elsewhere" / "report.json").exists(), out.stderr

    run_train(_config(tmp_path, model_cache, max_steps=3))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["healthy"] is True and summary["health"] == "healthy: every update applied"
    # A live holder: this test's own process, on this host, heartbeat fresh.
    (tmp_path / "run" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                        "started": 0, "refreshed": time.time()}))
    live = _report(tmp_path / "run")
    assert live.returncode == 0 and f"the run is still training (pid {os.getpid()}" in live.stdout, live.stdout
