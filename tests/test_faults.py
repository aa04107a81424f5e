"""Faults a user meets, injected for real, and what they see: one clear line, nothing lost, no hang."""

import json
import signal
import subprocess
import sys

from bonsai.train.resume.checkpoint import find_checkpoint
from conftest import ROOT, base_config, losses, run_train, sample_records, subprocess_env, train_command, write_config, wait_for_step


def test_ctrl_c_finishes_the_step_checkpoints_and_exits_130_and_the_resume_is_exact(tmp_path, model_cache):
    def config(name):
        cfg = base_config(tmp_path / name, model_cache)
        cfg["train"].update(max_steps=40)
        cfg["eval"] = {"probes": None}
        return write_config(tmp_path / f"{name}.yaml", cfg)

    run_train(config("straight"))
    interrupted = config("interrupted")
    proc = subprocess.Popen(train_command(interrupted), cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(tmp_path / "interrupted", 3, proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    stopped = json.loads((tmp_path / "interrupted" / "stopped.json").read_text())
    assert stopped["reason"] == "rank 0: SIGINT" and 3 <= stopped["step"] < 40
    run_train(interrupted)
    assert losses(tmp_path / "interrupted") == losses(tmp_path / "straight")


def _train_on(tmp_path, model_cache, tiny_dir, lines: bytes, policy: str = "error"):
    data = tmp_path / "data"
    data.mkdir(parents=True)
    (data / "part-00000.jsonl").write_bytes(lines)
    cfg = base_config(tmp_path / "run", model_cache, data)
    cfg["model"]["name_or_path"] = str(tiny_dir)
    cfg["data"].update(on_bad_record=policy, eval_fraction=0.0)
    cfg["train"].update(max_steps=2, warmup_steps=0)
    cfg["eval"] = {"probes": None}
    return run_train(write_config(tmp_path / "c.yaml", cfg), check=False)


def _good_lines(n=40) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in sample_records()[:n])


def test_non_utf8_bytes_name_file_line_and_offset_under_both_policies(tmp_path, model_cache, tiny_dir):
    bad = b'{"id": "x", "instruction": "caf\xe9", "output": "o", "category": "open_qa", "lang": "en"}\n'
    lines = _good_lines(20) + bad + _good_lines(40)[len(_good_lines(20)):]
    offset = len(_good_lines(20)) + bad.index(b"\xe9")
    proc = _train_on(tmp_path / "error", model_cache, tiny_dir, lines)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"part-00000.jsonl:21: field '(line)': not UTF-8: byte 0xe9 at file offset {offset}" in proc.stderr
    proc = _train_on(tmp_path / "skip", model_cache, tiny_dir, lines, policy="skip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    quarantined = [json.loads(l) for l in (tmp_path / "skip" / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["reason"][:10]) for q in quarantined] == [(21, "not UTF-8:")]


def test_a_huge_record_is_refused_before_it_is_parsed(tmp_path, model_cache, tiny_dir):
    huge = json.dumps({"id": "big", "instruction": "x", "output": "y" * 50_000_000, "category": "open_qa",
                       "lang": "en"}).encode() + b"\n"
    proc = _train_on(tmp_path, model_cache, tiny_dir, _good_lines() + huge)  # (was: no answer in 300 s, 3 GB)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"part-00000.jsonl:41: field '(line)': {len(huge):,} bytes, over data.max_record_bytes 1,048,576" in proc.stderr


def test_an_empty_data_file_says_it_is_empty(tmp_path, model_cache, tiny_dir):
    proc = _train_on(tmp_path, model_cache, tiny_dir, b"\n\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("part-00000.jsonl: empty, no records (blank lines are not records)")


def test_one_writer_per_run_dir_and_a_dead_holder_is_taken_over(tmp_path, model_cache):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"].update(max_steps=100_000, checkpoint_every=2)
    cfg["eval"] = {"probes": None}
    config = write_config(tmp_path / "c.yaml", cfg)
    first = subprocess.Popen(train_command(config), cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(tmp_path / "run", 3, first)
        second = run_train(config, ["train.lr=1e-2"], check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert f"is in use by pid {first.pid} on " in second.stderr and "one run per output_dir" in second.stderr
        assert first.poll() is None  # the first run goes on
        first.kill()  # SIGKILL: no chance to release the lock
        first.wait(timeout=60)
    finally:
        first.kill()
    cfg["train"]["max_steps"] = max(losses(tmp_path / "run")) + 2
    third = run_train(write_config(tmp_path / "c.yaml", cfg))
    assert f"taking over the lock of pid {first.pid}" in third.stdout + third.stderr
    assert "(its process is gone)" in third.stdout + third.stderr
    assert not (tmp_path / "run" / ".lock").exists()  # released at the end


def test_a_bad_newest_checkpoint_is_named_and_the_one_before_is_used(tmp_path, model_cache):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"].update(max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    cfg["eval"] = {"probes": None}
    config = write_config(tmp_path / "c.yaml", cfg)
    run_train(config)
    reference = losses(tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "step_00000006"

    def truncate(name):
        path = newest / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    faults = {"model.safetensors is ": lambda: truncate("model.safetensors"),
              "optimizer.bin is ": lambda: truncate("optimizer.bin"),
              "scheduler.bin is missing": lambda: (newest / "scheduler.bin").unlink(),
              "trainer_state.json is ": lambda: truncate("trainer_state.json")}
    intact = {p.name: p.read_bytes() for p in newest.iterdir() if p.is_file()}
    for problem, inject in faults.items():  # each kind of damage is named, and step 4 is chosen
        inject()
        chosen, problems = find_checkpoint(tmp_path / "run")
        assert chosen == newest.parent / "step_00000004" and len(problems) == 1, problems
        assert problems[0].startswith(f"{newest}: {problem}"), (problem, problems)
        for name, content in intact.items():
            (newest / name).write_bytes(content)
        assert find_checkpoint(tmp_path / "run") == (newest, [])
    # End to end, once: the launch warns, resumes from step 4 and trains 5 and 6 again, as before.
    faults["optimizer.bin is "]()
    proc = run_train(config)
    assert f"warning: checkpoint {newest}: optimizer.bin is " in proc.stdout, proc.stdout[-2000:]
    assert f"resumed from {newest.parent / 'step_00000004'} at step 4" in proc.stdout
    assert losses(tmp_path / "run") == reference  # the same steps, the same losses
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    for checkpoint in newest.parent.glob("step_*"):
        (checkpoint / "trainer_state.json").unlink()
    proc = run_train(config, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "holds 3 checkpoint(s) and none is complete" in proc.stderr and "trainer_state.json is missing" in proc.stderr
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # nothing retrained, nothing overwritten


def test_resuming_refuses_a_changed_hyperparameter_and_announces_an_allowed_change(tmp_path, model_cache):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"].update(max_steps=4)
    cfg["eval"] = {"probes": None}
    config = write_config(tmp_path / "c.yaml", cfg)
    run_train(config)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    proc = run_train(config, ["train.lr=1e-1"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "resuming" in proc.stderr and "train.lr: 0.002 -> 0.1" in proc.stderr and "new train.output_dir" in proc.stderr
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # config.yaml still says what ran
    proc = run_train(config, ["train.max_steps=6"])
    assert "config changed since step_00000004: train.max_steps: 4 -> 6" in proc.stdout
    assert sorted(losses(tmp_path / "run")) == list(range(1, 7))
    history = sorted(p.name for p in (tmp_path / "run" / "config_history").iterdir())
    assert history == ["from_step_00000000.yaml", "from_step_00000004.yaml"]
    assert "max_steps: 6" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_full_disk_while_checkpointing_says_so_and_leaves_nothing_partial(tmp_path, model_cache):
    import pytest

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a 30 MB tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        cfg = base_config(disk / "run", model_cache)
        cfg["train"].update(max_steps=12, checkpoint_every=2, keep_checkpoints=2)  # ~12 MB a checkpoint
        cfg["eval"] = {"probes": None}
        cfg["logging"]["wandb"] = {"mode": "disabled"}
        proc = run_train(write_config(tmp_path / "c.yaml", cfg), check=False)
        assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = sorted((disk / "run" / "checkpoints").glob("step_*"))[-1]
        assert "no space left on device while writing checkpoint step" in proc.stderr
        assert f"last complete checkpoint: {last}" in proc.stderr and "free " in proc.stderr
        assert not list((disk / "run" / "checkpoints").glob(".tmp-*"))  # the partial save is gone
        assert not list((disk / "run").rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_user_mistakes_are_one_line_before_any_heavy_work_and_debug_shows_the_traceback(tmp_path, model_cache):
    import pytest

    cfg = base_config(tmp_path / "run", model_cache)
    cfg["model"]["name_or_path"] = "someone/not-a-model"
    config = write_config(tmp_path / "hub.yaml", cfg)
    env = subprocess_env() | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bonsai.cli", "train", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "model.name_or_path 'someone/not-a-model': cannot be loaded" in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "bonsai.cli", "train", str(config), "--debug"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2 and "Traceback" in debug.stderr

    readonly = tmp_path / "ro"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a read-only tmpfs (needs root)")
    try:
        cfg = base_config(readonly / "run", model_cache)
        proc = run_train(write_config(tmp_path / "ro.yaml", cfg), check=False)
    finally:
        subprocess.run(["umount", str(readonly)], capture_output=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"train.output_dir {readonly / 'run'}: cannot write there (Read-only file system)" in proc.stderr
    assert "data:" not in proc.stdout  # refused before the data scan and the model load


def test_a_background_checkpoint_under_a_strategy_that_cannot_is_one_line(tmp_path, model_cache):
    """train.async_checkpoint is FSDP2's (DCP's background write); a DDP run refuses it before the model loads."""
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"]["async_checkpoint"] = True
    proc = run_train(write_config(tmp_path / "async.yaml", cfg), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "train.async_checkpoint=true: under DDP checkpoints are written in the foreground" in proc.stderr
    assert "model:" not in proc.stdout
