"""Training for real, in separate processes (2 ranks over gloo where it says so)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wandb_offline import history, wandb_records
from conftest import ROOT, SAMPLE, LAUNCH_TIMEOUT_S, base_config, losses, run_train, subprocess_env, train_command, write_config, wait_for_step

INVARIANCE_STEPS = 8


def _invariance_config(tmp_path, cache, name, micro_batch, accumulation):
    cfg = base_config(tmp_path / name, cache)
    # One record per row and no eval split: every layout then trains the same 4 records per step.
    cfg["data"].update(packing=False, eval_fraction=0.0)
    cfg["train"].update(max_steps=INVARIANCE_STEPS, micro_batch_size=micro_batch,
                        gradient_accumulation_steps=accumulation, warmup_steps=0, lr=4e-3)
    return write_config(tmp_path / f"{name}.yaml", cfg)


@pytest.fixture(scope="module")
def invariance_runs(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("invariance")
    layouts = {"mb4_acc1_1rank": (4, 1, 1), "mb1_acc4_1rank": (1, 4, 1), "mb2_acc1_2ranks": (2, 1, 2)}
    out = {}
    for name, (mb, acc, nproc) in layouts.items():
        run_train(_invariance_config(tmp, model_cache, name, mb, acc), nproc=nproc)
        out[name] = losses(tmp / name)
    return out


def test_loss_is_invariant_to_micro_batch_accumulation_and_ranks(invariance_runs):
    reference = invariance_runs["mb4_acc1_1rank"]
    assert sorted(reference) == list(range(1, INVARIANCE_STEPS + 1))
    for name, run in invariance_runs.items():
        for step, loss in reference.items():
            # fp32 sums in a different order differ in the last bits; 1e-5 is far below any real
            # normalisation error (averaging per-micro-batch means is off by ~1e-2 here).
            assert abs(run[step] - loss) < 1e-5, f"{name} step {step}: {run[step]} vs {loss}"


def test_two_rank_run_loss_falls(invariance_runs):
    run = [loss for _, loss in sorted(invariance_runs["mb2_acc1_2ranks"].items())]
    # Each step trains on new records, so single steps are noisy; compare the ends of the curve.
    assert sum(run[-3:]) / 3 < sum(run[:3]) / 3 - 0.3, run


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.parametrize("launch", [None, "zero3"], ids=["ddp", "zero3"])
def test_resume_after_preemption_matches_uninterrupted_run(tmp_path, model_cache, launch):
    """Two ranks; rank 1 alone gets SIGTERM mid-run. Both ranks stop after the same step, checkpoint
    and exit; a second launch resumes and every step's loss equals the uninterrupted run's. Under
    ZeRO-3 the checkpoint holds each rank's partition of weights and optimizer state."""
    steps = 20  # margin: the signal must land before the run ends on its own
    def config(name):
        cfg = base_config(tmp_path / name, model_cache)
        cfg["train"].update(max_steps=steps, micro_batch_size=2, gradient_accumulation_steps=2, checkpoint_every=5)
        cfg["eval"] = {"every_steps": 5}
        return write_config(tmp_path / f"{name}.yaml", cfg)

    run_train(config("straight"), nproc=2, launch=launch)
    reference = losses(tmp_path / "straight")
    # Launched processes end with os._exit once everything is flushed: the W&B file of the finished
    # run holds every step and the run's exit record, and the checkpoint and model are whole.
    records = wandb_records(tmp_path / "straight")
    assert max(json.loads(r["train/global_step"]) for r in history(records) if "train/global_step" in r) == steps
    assert any(r.WhichOneof("record_type") == "exit" for r in records)
    assert json.loads((tmp_path / "straight" / "summary.json").read_text())["steps"] == steps

    interrupted = config("interrupted")
    proc = subprocess.Popen(train_command(interrupted, nproc=2, launch=launch), cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(tmp_path / "interrupted", 3, proc)
        rank1 = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert rank1, "rank 1 not found among the launcher's children"
        os.kill(rank1[0], signal.SIGTERM)
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        proc.kill()
    assert "stop requested (SIGTERM)" in output and "stop requested (by another rank)" in output, output[-3000:]
    # Under the launcher a checkpointed stop is exit 0 and stopped.json (torchrun turns any other code
    # into 1 and a traceback, as it does for a crash); no traceback, no ChildFailedError.
    assert proc.returncode == 0 and "ChildFailedError" not in output, output[-3000:]
    assert json.loads((tmp_path / "interrupted" / "stopped.json").read_text())["step"] >= 3
    stopped_at = max(losses(tmp_path / "interrupted"))
    assert 3 <= stopped_at < steps

    resumed = run_train(interrupted, nproc=2, launch=launch)
    assert f"at step {stopped_at}" in resumed.stdout or "resumed from" in resumed.stdout
    after = losses(tmp_path / "interrupted")
    assert sorted(after) == sorted(reference) == list(range(1, steps + 1))
    for step in reference:
        assert after[step] == reference[step], f"step {step}"  # bitwise: same weights, optimizer, RNG and data
    # Both launches wrote to one W&B run.
    runs = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "interrupted").glob("wandb/offline-run-*")}
    assert len(list((tmp_path / "interrupted").glob("wandb/offline-run-*"))) == 2 and len(runs) == 1


def test_lora_run_saves_full_adapter_and_equivalent_merged_model(tmp_path, model_cache):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = base_config(tmp_path / "lora", model_cache)
    cfg["model"].update(finetune="lora", merge_lora_on_save=True, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    cfg["train"].update(max_steps=8, lr=1e-2)
    run_train(write_config(tmp_path / "lora.yaml", cfg))
    run = losses(tmp_path / "lora")
    assert run[8] < run[1]

    adapter = load_file(tmp_path / "lora" / "model" / "adapter_model.safetensors")
    lora_a = {k: v for k, v in adapter.items() if "lora_A" in k}
    assert len(lora_a) == 2 * 6  # 2 layers x (q, k, v, dense, fc1, fc2)
    assert all(v.shape[0] == 4 and v.numel() > 0 for v in lora_a.values())
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it trained

    summary = json.loads((tmp_path / "lora" / "summary.json").read_text())
    base_path = json.loads((tmp_path / "lora" / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), tmp_path / "lora" / "model")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model-merged")
    ids = torch.randint(0, 500, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-4)
    assert len(summary["model_dirs"]) == 2

    # `bonsai generate` answers the same from the adapter dir and from the merged model (greedy).
    prompt = ["--file", str(ROOT / "bonsai" / "probes" / "default.jsonl"), "--max-new-tokens", "16"]
    answers = [subprocess.run([sys.executable, "-m", "bonsai.cli", "generate", str(tmp_path / "lora" / d), *prompt],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env())
               for d in ("model", "model-merged")]
    assert all(a.returncode == 0 for a in answers), answers[0].stderr[-2000:]
    assert answers[0].stdout == answers[1].stdout and len(answers[0].stdout.splitlines()) == 25

    # `bonsai eval` puts the untrained base and the fine-tune side by side on the training records.
    out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "-m", "bonsai.cli", "eval", base_path, str(tmp_path / "lora" / "model-merged"),
                         "--data", str(SAMPLE), "--out", str(out), "--generate-limit", "12", "--max-new-tokens", "12"],
                        capture_output=True, text=True, timeout=240, cwd=ROOT, env=subprocess_env())
    assert ev.returncode == 0, ev.stderr[-2000:]
    table = json.loads((out / "eval.json").read_text())
    base_metrics, tuned_metrics = (m["metrics"] for m in table["models"])
    assert tuned_metrics["eval/loss"] < base_metrics["eval/loss"]
    assert {"eval/loss_by_category/translation", "eval/loss_by_language/ja",
            "eval/generation/repeated_3gram_ratio"} <= set(tuned_metrics)
    assert (out / "eval.png").stat().st_size > 10_000 and "eval/loss_by_category/translation" in ev.stdout


def test_full_model_is_saved_in_bf16_on_request_from_the_fp32_master_weights(tmp_path, model_cache):
    """train.save_dtype bf16: the model dir holds the final checkpoint's fp32 weights rounded to bf16 (half
    the bytes), config.json says so, and it loads for generation."""
    from safetensors.torch import load_file

    cfg = base_config(tmp_path / "bf16", model_cache)
    cfg["train"].update(max_steps=3, save_dtype="bf16")
    run_train(write_config(tmp_path / "bf16.yaml", cfg))
    saved = load_file(tmp_path / "bf16" / "model" / "model.safetensors")
    master = load_file(tmp_path / "bf16" / "checkpoints" / "step_00000003" / "model.safetensors")
    assert saved.keys() == master.keys() and all(t.dtype == torch.bfloat16 for t in saved.values())
    for key, weight in master.items():
        assert torch.equal(saved[key], weight.to(torch.bfloat16)), key
    assert json.loads((tmp_path / "bf16" / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    answer = subprocess.run([sys.executable, "-m", "bonsai.cli", "generate", str(tmp_path / "bf16" / "model"),
                             "--max-new-tokens", "4", "--prompt", "What is the capital of Japan?"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env())
    assert answer.returncode == 0, answer.stderr[-2000:]


def test_results_do_not_depend_on_whether_the_model_cache_existed(tmp_path):
    """Building tiny-phi must not consume the run's random state (it once shifted LoRA's init)."""
    cache = tmp_path / "fresh-cache"
    runs = []
    for name in ("cold", "warm"):
        cfg = base_config(tmp_path / name, cache)
        cfg["model"].update(finetune="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
        cfg["train"].update(max_steps=3, warmup_steps=0, lr=1e-2)
        cfg["eval"] = {"probes": None}
        cfg["logging"]["wandb"] = {"mode": "disabled"}
        run_train(write_config(tmp_path / f"{name}.yaml", cfg))
        runs.append(losses(tmp_path / name))
    assert len(list(cache.glob("tiny-phi-*"))) == 1
    assert runs[0] == runs[1]


def test_a_killed_rank_makes_the_others_fail_fast_with_a_clear_message(tmp_path, model_cache):
    cfg = base_config(tmp_path / "run", model_cache)
    cfg["train"].update(max_steps=100_000, checkpoint_every=2)
    cfg["distributed"] = {"timeout_s": 10}
    config = write_config(tmp_path / "c.yaml", cfg)
    proc = subprocess.Popen(train_command(config, nproc=2), cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(tmp_path / "run", 3, proc)
        rank1 = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert rank1
        killed_at = time.monotonic()
        os.kill(rank1[0], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
        waited = time.monotonic() - killed_at
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert waited < 60, f"took {waited:.0f}s to notice a dead rank"
    assert "rank 0: a collective failed at step" in output, output[-3000:]
    assert "Last complete checkpoint:" in output and "checkpoints/step_" in output
