"""Every file a user is given runs as shipped: each launch/*.yaml and each configs/*.yaml (RUNS), on CPU
processes over gloo, exactly as `accelerate launch --config_file launch/X.yaml --num_processes 2 -m
bonsai.cli train configs/Y.yaml` (only the process count and a free port on the command line).

What a 2-core CPU forces, and nothing else, is changed in the config (CPU_CUTS): the model (tiny-phi for
microsoft/phi-2: no hub, no GPU), the number of steps (STEPS), the row length and the probes' decode length (and log_every, to compare every step). Precision, weight decay,
clipping, warm-up, batch size, LoRA and gradient checkpointing stay as shipped, so the same runs pin
that every ZeRO stage trains exactly as DDP does with the shipped hyperparameters (weight decay 0.1 in
phi2_full.yaml)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import LAUNCH_TIMEOUT_S, ROOT, free_port, losses, subprocess_env, write_config

# configs/demo.yaml warms up for 10 steps; at its lr (3e-3) and decay (0.01) 12 steps show any lost
# decay in the weights. The phi2 configs (lr 1e-5) run 4: they show that everything starts, steps,
# checkpoints, evaluates, probes and saves under every launch file, and the same optimizer groups.
STEPS = {"demo": 12, "phi2_full": 4, "phi2_lora": 4}
MAX_LENGTH = 128
LAUNCHES = ["single_gpu", "ddp", "zero1", "zero2", "zero3", "zero3_offload", "multi_node_zero3", "fsdp2",
            "multi_node_fsdp2"]
CONFIGS = ["demo", "phi2_full", "phi2_lora"]
# Every launch file with the demo config (the equivalence to DDP, weight decay included, on each); every
# config on DDP and on each sharded strategy's family (ZeRO-2, ZeRO-3 and its offload optimizer, FSDP2),
# where the Phi-2 configs' own settings meet them: phi2_full's decay 0.1 and global batch, phi2_lora's
# adapters and gradient checkpointing. The rest of the product repeats these runs' code paths.
RUNS = ([("demo", launch) for launch in LAUNCHES]
        + [("phi2_full", launch) for launch in ("ddp", "zero2", "zero3", "zero3_offload", "fsdp2")]
        + [("phi2_lora", launch) for launch in ("ddp", "zero3", "fsdp2")])
# Same data, seed and fp32 arithmetic: the strategies differ only in the order gradients are summed.
# Seen: ~1e-6 after 12 Adam steps; a lost micro-batch or a wrong scale moves the loss by >1e-3.
LOSS_TOL = 1e-5


def test_the_matrix_covers_every_shipped_file():
    assert sorted(p.stem for p in (ROOT / "launch").glob("*.yaml")) == sorted(LAUNCHES)
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")) == sorted(CONFIGS)
    assert {launch for _, launch in RUNS} == set(LAUNCHES) and {config for config, _ in RUNS} == set(CONFIGS)


def test_launch_files_leave_precision_to_the_bonsai_config():
    # Accelerate refuses `mixed_precision` next to a `deepspeed_config_file`; and one owner of precision
    # (train.precision) means DDP and DeepSpeed runs of one config train alike.
    for path in (ROOT / "launch").glob("*.yaml"):
        assert "mixed_precision" not in yaml.safe_load(path.read_text()), path.name


def cpu_cut(config: str, run_dir: Path, model_cache: Path) -> dict:
    """The shipped config with only what a 2-core CPU forces changed."""
    cfg = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    cfg["model"].update(name_or_path="tiny-phi", cache_dir=str(model_cache))
    cfg["data"]["max_length"] = min(cfg["data"]["max_length"], MAX_LENGTH)
    # Probes decode token by token; under ZeRO-3 every token gathers the weights (~20 s for 96 tokens here).
    cfg.setdefault("eval", {}).setdefault("decode", {})["max_new_tokens"] = 16
    # log_every changes no arithmetic; every step's loss is what the equivalence tests compare.
    cfg["train"].update(max_steps=STEPS[config], output_dir=str(run_dir), log_every=1)
    return cfg


def launch_commands(launch: str, config: Path) -> list[list[str]]:
    """The user's command; for a multi-node file, one per machine rank (two "machines" on localhost)."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / f"{launch}.yaml")]
    train = ["-m", "bonsai.cli", "train", str(config)]
    port = str(free_port())
    if launch == "single_gpu":
        return [[*accelerate, "--main_process_port", port, *train]]
    if launch.startswith("multi_node"):
        return [[*accelerate, "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                 "--main_process_port", port, *train] for rank in (0, 1)]
    return [[*accelerate, "--num_processes", "2", "--main_process_port", port, *train]]


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory, model_cache):
    """Runs (config, launch) once per module; returns (run dir, combined output)."""
    root = tmp_path_factory.mktemp("shipped")

    @cache
    def run(config: str, launch: str) -> tuple[Path, str]:
        run_dir = root / f"{config}-{launch}"
        path = write_config(root / f"{config}-{launch}.yaml", cpu_cut(config, run_dir, model_cache))
        # W&B is the environment's choice, not a shipped file's; its offline runs are tested elsewhere.
        env = subprocess_env() | {"WANDB_MODE": "disabled"}
        # Each launcher in its own session: on a timeout the whole tree goes (workers left behind would wait
        # for their launcher's store for good), and the output so far is in the failure, before pytest's
        # own time limit ends the test without it.
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True) for cmd in launch_commands(launch, path)]
        outputs = []
        try:
            for proc in procs:
                outputs.append(proc.communicate(timeout=LAUNCH_TIMEOUT_S - 30)[0])
        except subprocess.TimeoutExpired:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGKILL)
            outputs = [proc.communicate()[0] for proc in procs]
            pytest.fail(f"{config} on {launch}: no end after {LAUNCH_TIMEOUT_S - 30} s\n" + "\n".join(outputs)[-6000:])
        finally:
            for proc in procs:
                proc.kill()
        output = "\n".join(outputs)
        codes = [p.returncode for p in procs]
        assert codes == [0] * len(procs), f"{config} on {launch}: exit codes {codes}\n{output[-6000:]}"
        return run_dir, output

    return run


@pytest.mark.parametrize(("config", "launch"), RUNS)
def test_shipped_config_runs_on_shipped_launch_file(shipped_run, config, launch):
    run_dir, output = shipped_run(config, launch)
    processes = 1 if launch == "single_gpu" else 2
    assert f"{processes} process(es)" in output  # every rank saw the true world size
    assert "done: " in output and "Traceback" not in output, output[-3000:]
    assert sorted(losses(run_dir)) == list(range(1, STEPS[config] + 1))
    shipped = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    model = run_dir / "model"
    if shipped["model"]["finetune"] == "lora":
        assert load_file(model / "adapter_model.safetensors") and (run_dir / "model-merged" / "model.safetensors").exists()
    else:
        assert load_file(model / "model.safetensors")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS[config]
    if config == "demo":  # at lr 1e-5 (phi2) 4 steps are noise; at 3e-3 the loss must fall
        assert summary["last_loss"] < summary["first_loss"]


def _assert_same_training(shipped_run, config: str, launches: list[str]) -> None:
    reference_dir, reference_output = shipped_run(config, "ddp")
    reference = losses(reference_dir)
    # Not anchored at a line start: another rank's unfinished line (a library warning) may precede it.
    decay_line = re.search(r"optimizer: AdamW.*$", reference_output, re.MULTILINE).group(0)
    for launch in launches:
        run_dir, output = shipped_run(config, launch)
        assert decay_line in output, (launch, decay_line)  # the same tensors decayed, under every strategy
        run = losses(run_dir)
        for step in reference:
            assert abs(run[step] - reference[step]) < LOSS_TOL, (config, launch, step, run[step], reference[step])


def _assert_same_weights(shipped_run, config: str, launches: list[str]) -> None:
    """Final weights equal DDP's. The norms of the weight matrices are where a lost decay shows: at the
    demo's lr 3e-3 and decay 0.01 it moves them by ~4e-4 relative; the strategies differ by ~1e-6."""
    reference = load_file(shipped_run(config, "ddp")[0] / "model" / "model.safetensors")
    for launch in launches:
        weights = load_file(shipped_run(config, launch)[0] / "model" / "model.safetensors")
        assert weights.keys() == reference.keys()
        for key, tensor in reference.items():
            assert weights[key].shape == tensor.shape, (launch, key)  # ZeRO-3 partitions gathered, not saved empty
            if tensor.ndim == 2:
                assert weights[key].norm().item() == pytest.approx(tensor.norm().item(), rel=2e-5), (launch, key)
            torch.testing.assert_close(weights[key], tensor, rtol=1e-3, atol=1e-3)


def sharded(config: str) -> list[str]:
    """The config's runs on two processes other than DDP's."""
    return [launch for c, launch in RUNS if c == config and launch not in ("single_gpu", "ddp")]


def test_every_zero_stage_trains_the_full_configs_as_ddp_does_weight_decay_included(shipped_run):
    """Every ZeRO stage and FSDP2. phi2_full.yaml (weight decay 0.1, clipping 1.0, warm-up ratio, global batch 64) and demo.yaml
    (decay 0.01). Before the fix ZeRO-3's parameter groups saw its empty 1-D placeholders and decayed
    nothing; at phi2_full's lr of 1e-5 that hides in the loss, hence the optimizer line and the demo."""
    for config in ("phi2_full", "demo"):
        _assert_same_training(shipped_run, config, sharded(config))
        _assert_same_weights(shipped_run, config, sharded(config))


def test_every_zero_stage_trains_phi2_lora_as_ddp_does(shipped_run):
    """FSDP2 included: its adapters are gathered whole from the shards."""
    _assert_same_training(shipped_run, "phi2_lora", sharded("phi2_lora"))
    reference = load_file(shipped_run("phi2_lora", "ddp")[0] / "model" / "adapter_model.safetensors")
    for launch in ("zero3", "fsdp2"):
        adapter = load_file(shipped_run("phi2_lora", launch)[0] / "model" / "adapter_model.safetensors")
        assert adapter.keys() == reference.keys() and len(adapter) == 2 * 2 * 6  # A and B, 2 layers, 6 modules
        for key, tensor in reference.items():
            assert adapter[key].shape == tensor.shape and adapter[key].numel() > 0, key  # the empty-adapter bug
            torch.testing.assert_close(adapter[key], tensor, rtol=1e-3, atol=1e-3)


def test_sharded_memory_per_rank_and_export_of_sharded_checkpoints(shipped_run, tmp_path):
    """Measured after the first update: ZeRO-2 halves the optimizer state over 2 ranks, ZeRO-3 and FSDP2
    halve parameters and optimizer state together (partition padding: within 10%). `bonsai export`
    consolidates the final ZeRO-3 and FSDP2 checkpoints into models with the trained logits."""
    def mem(launch):
        rows = (json.loads(line) for line in (shipped_run("phi2_full", launch)[0] / "metrics.jsonl").read_text().splitlines())
        return next(r for r in rows if "memory/params_bytes" in r)

    ddp, zero2, zero3, fsdp2 = mem("ddp"), mem("zero2"), mem("zero3"), mem("fsdp2")
    ratio = lambda m, *keys: sum(m[f"memory/{k}_bytes"] for k in keys) / sum(ddp[f"memory/{k}_bytes"] for k in keys)
    assert ratio(zero2, "optimizer") == pytest.approx(0.5, rel=0.1)
    assert ratio(zero2, "params") == pytest.approx(1.0, rel=0.01)
    assert ratio(zero3, "params", "optimizer") == pytest.approx(0.5, rel=0.1)
    assert ratio(fsdp2, "params", "optimizer") == pytest.approx(0.5, rel=0.1)
    assert ddp["memory/master_weights_bytes"] == 0

    from transformers import AutoModelForCausalLM

    for launch, sharded in (("zero3", "pytorch_model/*optim_states.pt"), ("fsdp2", "dcp/*.distcp")):
        run_dir = shipped_run("phi2_full", launch)[0]
        final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
        assert len(list(final.glob(sharded))) == 2  # each rank wrote its own part
        out = tmp_path / f"exported-{launch}"
        proc = subprocess.run([sys.executable, "-m", "bonsai.cli", "export", str(final), "--out", str(out)],
                              cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        exported = AutoModelForCausalLM.from_pretrained(out)
        trained = AutoModelForCausalLM.from_pretrained(run_dir / "model")
        ids = torch.randint(0, 500, (2, 32))
        with torch.no_grad():
            torch.testing.assert_close(exported(ids).logits, trained(ids).logits, rtol=0, atol=1e-6)

    # LoRA: the export consolidates only the adapters (not a second copy of the frozen base) and merges
    # them shard by shard; both equal what the run itself saved.
    run_dir = shipped_run("phi2_lora", "zero3")[0]
    final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    proc = subprocess.run([sys.executable, "-m", "bonsai.cli", "export", str(final), "--out", str(tmp_path / "lora")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported, saved = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "lora", run_dir / "model"))
    assert exported.keys() == saved.keys() and len(saved) == 2 * 2 * 6
    for key, tensor in saved.items():
        torch.testing.assert_close(exported[key], tensor, rtol=0, atol=1e-6)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora-merged")
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "model-merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained(ids).logits, rtol=0, atol=1e-5)


MALLOC_PROBE = """
import sys, psutil, torch
from bonsai.train.distributed import SETUP_MMAP_THRESHOLD, set_malloc_mmap_threshold
if sys.argv[1] == "fixed":
    assert set_malloc_mmap_threshold(SETUP_MMAP_THRESHOLD)
rss = lambda: psutil.Process().memory_info().rss / 2**20
first = torch.empty(26 << 18)  # 26 MiB, written and freed: glibc's threshold rises past the blocks below
first.fill_(1)
del first
blocks = [torch.ones(20 << 18) for _ in range(40)]  # 800 MiB in 20 MiB blocks, as weight matrices are
peak = rss()
del blocks[:-1]  # freed, all but the last (as partitioning frees the whole weights it built)
print(peak - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_weights_go_back_to_the_system():
    """Under glibc's default the 780 MiB freed stay with the process (the heap cannot shrink below the
    last block); with the threshold Bonsai sets while it builds the model they are returned."""
    returned = {how: float(subprocess.run([sys.executable, "-c", MALLOC_PROBE, how], cwd=ROOT, capture_output=True,
                                          text=True, timeout=120, check=True).stdout) for how in ("default", "fixed")}
    assert returned["default"] < 100 and returned["fixed"] > 700, returned
