"""Instability tracking on real runs: planted bad records are flagged and named, non-finite steps never
reach the weights, rollbacks resume from a checkpoint past the bad data, and W&B holds it all."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import base_config, run_train, write_config, write_shards, ROOT, subprocess_env
from planted import planted_records
from wandb_offline import history, wandb_records

import subprocess
import sys


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("planted")
    records, planted = planted_records()
    data = write_shards(tmp / "data", records)
    cfg = base_config(tmp / "run", model_cache, data)
    cfg["data"]["eval_fraction"] = 0.0
    cfg["train"].update(max_steps=200, micro_batch_size=4, lr=3e-3, warmup_steps=10)
    # Four rows a step make a noisy loss; thresholds lower than the production default of 6 find
    # the few batches where a planted record stands out.
    cfg["monitor"] = {"loss_z": 3.0, "grad_z": 3.0}
    cfg["eval"] = {"probe_every": 100, "decode": {"max_new_tokens": 24}}
    cfg["logging"]["wandb"] = {"mode": "offline", "project": "bonsai-tests", "tags": ["planted"]}
    cfg["logging"]["peak_tflops_per_device"] = 0.5  # a CPU has no known peak: set one so MFU is logged
    run_train(write_config(tmp / "c.yaml", cfg))
    report = subprocess.run([sys.executable, "-m", "bonsai.cli", "report", str(tmp / "run")], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    return tmp / "run", planted, report.stdout


def test_planted_records_top_the_suspect_table(planted_run):
    run_dir, planted, console = planted_run
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events, "no instability event was flagged"
    assert all(e["records"] and e["data_positions"] for e in events)
    assert all(set(r) >= {"id", "category", "lang", "loss", "tokens"} for e in events for r in e["records"])

    report = json.loads((run_dir / "report.json").read_text())
    top = [s["id"] for s in report["suspects"][: len(planted)]]
    hits = len(set(top) & planted)
    precision, recall = hits / len(top), hits / len(planted)
    print(f"suspect table vs planted: precision@{len(planted)} {precision:.2f}, recall {recall:.2f}")
    assert precision >= 0.7 and recall >= 0.7, (top, precision, recall)
    assert all(s["why"] for s in report["suspects"][: len(planted)])
    assert (run_dir / "report.png").stat().st_size > 20_000
    assert "suspect records" in console and top[0] in console


def test_wandb_offline_run_holds_metrics_events_and_config(planted_run):
    run_dir, _, _ = planted_run
    records = wandb_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == run_dir.name and list(run.tags) == ["planted"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["max_steps"] == 200 and config["monitor"]["loss_z"] == 3.0
    rows = history(records)
    assert any("train/loss" in r and "train/loss_by_category/open_qa" in r and "train/loss_by_language/en" in r
               for r in rows)
    assert all(0 < json.loads(r["train/mfu"]) < 1 and json.loads(r["memory/max_rss_gb"]) > 0.1
               for r in rows if "train/loss" in r)
    assert max(json.loads(r["train/global_step"]) for r in rows if "train/global_step" in r) == 200
    assert any(r.get("events/_type") == '"table-file"' for r in rows)
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/events_*.table.json"))
    last = max(tables, key=lambda p: len(json.loads(p.read_text())["data"]))
    events = (run_dir / "events.jsonl").read_text().splitlines()
    assert len(json.loads(last.read_text())["data"]) == len(events)
    assert sum(r.WhichOneof("record_type") == "alert" for r in records) == len(events)
    assert (run_dir / "wandb_run_id").read_text() == run.run_id


def _diverging(tmp_path, cache, name, monitor):
    cfg = base_config(tmp_path / name, cache)
    # A learning rate this large sends the weights to infinity after one update: real non-finite losses.
    cfg["train"].update(lr=1e6, max_grad_norm=None, warmup_steps=0, max_steps=12, checkpoint_every=1,
                        keep_checkpoints=20)
    # Divergence (a finite loss far above a uniform guess) would stop the run first: here the non-finite path.
    cfg["monitor"] = {"enabled": monitor, "on_nonfinite": "skip", "divergence_ratio": 1e9}
    return run_train(write_config(tmp_path / f"{name}.yaml", cfg), check=False)


def _finite(weights_file: Path) -> bool:
    return all(torch.isfinite(w).all() for w in load_file(weights_file).values())


def test_skip_policy_keeps_non_finite_steps_out_of_the_weights_and_a_run_that_cannot_recover_stops(tmp_path,
                                                                                                   model_cache):
    proc = _diverging(tmp_path, model_cache, "guarded", monitor=True)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "5 updates skipped in a row (monitor.max_skipped_in_a_row" in proc.stderr
    events = [json.loads(line) for line in (tmp_path / "guarded" / "events.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in events} == {"nonfinite"} and {e["action"] for e in events} == {"skip"}
    # Nothing was saved from the condemned state: no checkpoint after the first non-finite step, no model.
    first_bad = min(e["step"] for e in events)
    saved = sorted((tmp_path / "guarded" / "checkpoints").glob("step_*"))
    assert saved and all(int(p.name[5:]) < first_bad for p in saved), saved
    assert all(_finite(p / "model.safetensors") for p in saved)
    assert not (tmp_path / "guarded" / "model").exists()
    summary = json.loads((tmp_path / "guarded" / "summary.json").read_text())
    assert summary["healthy"] is False and "skipped in a row" in summary["health"]
    control = _diverging(tmp_path, model_cache, "unguarded", monitor=False)
    assert control.returncode == 0  # the control: without the monitor the same run ends with NaN weights
    assert not _finite(tmp_path / "unguarded" / "model" / "model.safetensors")


def test_rollback_resumes_from_checkpoint_past_the_bad_window_and_is_capped(tmp_path, model_cache):
    records, _ = planted_records()
    data = write_shards(tmp_path / "data", records)
    cfg = base_config(tmp_path / "run", model_cache, data)
    cfg["data"]["eval_fraction"] = 0.0
    cfg["train"].update(max_steps=150, lr=3e-3, warmup_steps=10, checkpoint_every=10, keep_checkpoints=3)
    cfg["monitor"] = {"loss_z": 2.0, "grad_z": 2.0, "on_loss_spike": "rollback", "on_grad_spike": "rollback",
                      "max_rollbacks": 2}
    proc = run_train(write_config(tmp_path / "c.yaml", cfg), check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "after 2 rollback(s) (monitor.max_rollbacks)" in proc.stderr
    assert proc.stdout.count("rolled back to step_") == 2

    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    rollbacks = [e for e in events if e["action"] == "rollback"]
    assert len(rollbacks) >= 3  # two carried out, the third refused
    first = rollbacks[0]
    checkpoint_step = (first["step"] - 1) // 10 * 10
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    resumed = next(r for r in rows if r["step"] == checkpoint_step + 1 and "train/loss" in r)
    # Training went back to the checkpoint's step but not to its data: it continued after the event's rows.
    assert (resumed["data/epoch"], resumed["data/taken"]) > (first["data_positions"][0]["epoch"],
                                                            first["data_positions"][0]["taken"])


def test_probes_are_generated_during_training_and_logged(planted_run):
    from bonsai.evaluate.generation import load_probes

    run_dir, _, _ = planted_run
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    probes = load_probes("default")
    assert sorted({r["step"] for r in rows}) == [100, 200] and len(rows) == 2 * len(probes)
    for r in rows:
        assert r["prompt"].startswith("### Category: ") and r["prompt"].endswith("### Response:\n")
        assert {"repeated_3gram_ratio", "distinct_1", "distinct_2", "longest_repeated_span"} <= set(r["metrics"])
    assert any("chrf" in r["metrics"] for r in rows) and any("exact" in r["metrics"] for r in rows)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("probe/repeated_3gram_ratio_by_category/translation" in m and m["step"] == 200 for m in metrics)
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/probes_*.table.json"))
    assert max(len(json.loads(t.read_text())["data"]) for t in tables) == 2 * len(probes)


def test_detector_state_survives_a_resume(tmp_path, model_cache):
    """A run stopped by SIGTERM and resumed flags the same events (step, kind) as an uninterrupted run,
    a spike within the detector's warm-up after the resume included: the detector's window, trend and
    step count are in the checkpoint (they were once rebuilt empty, blind for 20 steps per requeue)."""
    import os
    import signal
    import time

    from conftest import train_command

    records, _ = planted_records()
    data = write_shards(tmp_path / "data", records)

    def config(name):
        cfg = base_config(tmp_path / name, model_cache, data)
        cfg["data"]["eval_fraction"] = 0.0
        cfg["train"].update(max_steps=110, micro_batch_size=4, lr=3e-3, warmup_steps=10)
        cfg["monitor"] = {"loss_z": 2.0, "grad_z": 2.0, "trend_window": 30}  # low: a few events in 110 steps
        cfg["eval"] = {"probes": None}
        cfg["logging"]["wandb"] = {"mode": "disabled"}
        return write_config(tmp_path / f"{name}.yaml", cfg)

    def events(name):
        path = tmp_path / name / "events.jsonl"
        return [(e["step"], e["kind"]) for e in map(json.loads, path.read_text().splitlines())] if path.exists() else []

    run_train(config("straight"))
    reference = events("straight")
    spikes = [step for step, kind in reference if kind.endswith("_spike") and step >= 40]
    assert spikes, f"no spike past step 40 to test with: {reference}"
    stop_after = spikes[0] - 10  # the resumed run must flag it within its first 20 steps

    interrupted = config("interrupted")
    proc = subprocess.Popen(train_command(interrupted), cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "interrupted" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and any(json.loads(l)["step"] >= stop_after for l in metrics.read_text().splitlines()):
                os.kill(proc.pid, signal.SIGTERM)
                break
            time.sleep(0.02)
        output, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 75, output[-3000:]
    stopped_at = json.loads((tmp_path / "interrupted" / "stopped.json").read_text())["step"]
    assert stopped_at < spikes[0] <= stopped_at + 20, (stopped_at, spikes[0])
    run_train(interrupted)
    assert events("interrupted") == reference


def test_clean_from_report_leaves_out_the_suspects_and_a_run_can_exclude_them(planted_run, tmp_path, model_cache):
    """`bonsai data clean --from-report` writes the run's data without its top suspects (every other line
    byte for byte, under the same shard names) and excluded.jsonl; `data.exclude` trains and evaluates
    the original data without them, every other record once per epoch."""
    from bonsai.data.records import in_eval_split

    run_dir, planted, _ = planted_run
    data = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["path"])
    out = tmp_path / "clean"
    clean = [sys.executable, "-m", "bonsai.cli", "data", "clean", "--from-report", str(run_dir),
             "--top", str(len(planted)), "--out", str(out)]
    proc = subprocess.run(clean, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = [s["id"] for s in json.loads((run_dir / "report.json").read_text())["suspects"][: len(planted)]]
    excluded = [json.loads(line) for line in (out / "excluded.jsonl").read_text().splitlines()]
    assert [e["id"] for e in excluded] == top and all(e["reasons"] and e["score"] > 0 for e in excluded)
    for e in excluded:  # file:line names the record's line
        path, line = e["where"].rsplit(":", 1)
        assert json.loads(Path(path).read_text(encoding="utf-8").splitlines()[int(line) - 1])["id"] == e["id"]
    shards = sorted(data.glob("*.jsonl"))
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted([p.name for p in shards] + ["excluded.jsonl"])
    for shard in shards:
        kept = [line for line in shard.read_bytes().splitlines(keepends=True) if json.loads(line)["id"] not in top]
        assert (out / shard.name).read_bytes() == b"".join(kept)
    again = subprocess.run(clean, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr, again.stderr

    cfg = base_config(tmp_path / "run", model_cache, data)
    cfg["data"]["exclude"] = str(out / "excluded.jsonl")
    cfg["train"]["max_steps"] = 24  # past one epoch of the planted data
    cfg["eval"] = {"probes": None}
    proc = run_train(write_config(tmp_path / "c.yaml", cfg))
    assert f"{len(top)} of {len(top)} listed record(s) left out of training and eval" in proc.stdout, proc.stdout
    everything = {json.loads(line)["id"] for shard in shards for line in shard.read_text(encoding="utf-8").splitlines()}
    kept = everything - set(top)
    evaluated = {i for i in kept if in_eval_split(i, cfg["data"]["eval_fraction"])}
    assert f"data: {len(kept) - len(evaluated)} train and {len(evaluated)} eval records" in proc.stdout
    epochs: dict[int, set] = {}
    for line in (tmp_path / "run" / "data_log" / "rank0.jsonl").read_text().splitlines():
        row = json.loads(line)
        for record, epoch in zip(row["records"], row["epochs"]):
            epochs.setdefault(epoch, set()).add(record)
    assert 1 in epochs and epochs[0] == kept - evaluated
