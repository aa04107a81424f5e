"""What the benchmark scripts share: running `bonsai train` on a config, and a run's per-step rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from bonsai.data.records import Record
from bonsai.observe.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# The side-by-side benchmarks' model (vs_trl, framework_cost, scaling): bigger than the demo's tiny Phi, so
# the model's compute, not Python overhead, dominates a step.
SHAPE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8, "vocab_size": 2048}
SEED, LR, WARMUP_STEPS = 42, 1e-3, 5


def build_model(cache: Path) -> Path:
    """A random-init Phi of SHAPE with a tokenizer trained on the sample data, saved with save_pretrained."""
    from bonsai.config import TinyPhiConfig
    from bonsai.model.source import tiny_phi_for

    return tiny_phi_for(str(SAMPLE), TinyPhiConfig(**SHAPE), cache, seed=SEED)


def bonsai_config(model_dir: Path, run_dir: Path, args) -> dict:
    """Bonsai's side of a side-by-side benchmark (vs_trl, framework_cost): `args.max_length`, `.rows` per
    step and `.steps`, packed, fp32, clipping at 1.0, nothing evaluated, W&B off."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(SAMPLE), "max_length": args.max_length, "packing": True, "eval_fraction": 0.0},
        "train": {"output_dir": str(run_dir), "seed": SEED, "max_steps": args.steps, "micro_batch_size": args.rows,
                  "gradient_accumulation_steps": 1, "lr": LR, "warmup_steps": WARMUP_STEPS, "precision": "fp32",
                  "max_grad_norm": 1.0, "log_every": 1, "checkpoint_every": 0},
        "eval": {"every_steps": 0, "probes": None},
        "logging": {"progress_bar": False, "wandb": {"mode": "disabled"}},
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bonsai(cfg: dict, config: Path, launch: list[str] | None = None, env: dict[str, str] | None = None,
               timeout_s: int = 1800) -> subprocess.CompletedProcess:
    """Writes `cfg` to `config` and trains on it: `bonsai train` directly, or under `accelerate launch`
    with `launch`'s arguments (a free port added). W&B is off. A failed run raises with its output."""
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    train = ["-m", "bonsai.cli", "train", str(config)]
    if launch is not None:
        train = ["-m", "accelerate.commands.launch", *launch, "--main_process_port", str(free_port()), *train]
    proc = subprocess.run([sys.executable, *train], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                          env=os.environ | {"WANDB_MODE": "disabled", **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"bonsai train {config.name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc


def step_rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl's training rows (those with a loss) by step."""
    return {r["step"]: r for r in read_metrics(run_dir) if "train/loss" in r}


SETS = ROOT / "bench" / "sets"


def read_set(name: str) -> tuple[list[Record], dict[str, str]]:
    rows = [json.loads(line) for line in (SETS / name / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    fields = ("id", "instruction", "input", "output", "category", "lang", "source_lang")
    records = [Record(**{f: row.get(f) for f in fields}) for row in rows]
    planted = json.loads((SETS / name / "labels.json").read_text(encoding="utf-8"))["planted"]
    return records, {rid: p["kind"] for rid, p in planted.items()}
