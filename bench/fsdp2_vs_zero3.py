"""FSDP2 against DeepSpeed ZeRO-3 on 2 CPU processes: seconds per step, peak RSS per rank, checkpoint
seconds and bytes, and the resume on the same and on another number of processes.

    .venv/bin/python bench/fsdp2_vs_zero3.py [--layers 8] [--finetune lora] [--steps 4] [--work DIR]
        [--strategies zero3 fsdp2] [--async-checkpoint]

The model is a random-init Phi with Phi-2's width (hidden 2560, 32 heads, intermediate 10240, vocabulary
51,200) and `--layers` of its 32 layers (8: 0.90 B parameters, 3.6 GB fp32), fp32, through the shipped
launch files (launch/fsdp2.yaml; launch/zero3.yaml with DeepSpeed's live-parameter limit lowered as in
bench/phi2_cpu_zero3.py) and configs/phi2_lora.yaml (or phi2_full.yaml) with only the model, row length,
batch and steps changed. Each strategy: a run of `--steps` steps checkpointing at the last (its s/step from
the metrics after the first step, its checkpoint from Bonsai's own log line and the directory's size), then
a resume of one more step on 2 processes and one on 1 process (wall clock from launch to exit: process
start, load and reshard, the step, its checkpoint and the final model, adapter and merged, included).
`--async-checkpoint`: FSDP2 checkpoints every step in the background (train.async_checkpoint) and the
seconds each took to hand off are printed beside the foreground final checkpoint's.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import step_rows
from phi2_cpu_zero3 import PHI2, cpu_launch_file, run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_base(work: Path, layers: int) -> Path:
    import shutil

    import torch
    from transformers import PhiConfig, PhiForCausalLM

    from bonsai.config import TinyPhiConfig
    from bonsai.model.source import tiny_phi_for

    base = work / f"phi2-{layers}-layers"
    if (base / "config.json").exists():
        return base
    tokenizer_from = tiny_phi_for(str(ROOT / "data" / "sample"), TinyPhiConfig(), work / "cache", seed=0)
    torch.manual_seed(0)
    model = PhiForCausalLM(PhiConfig(**{**PHI2, "num_hidden_layers": layers}, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(base, safe_serialization=True, max_shard_size="2GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / name, base / name)
    return base


def launch_file(strategy: str, work: Path) -> Path:
    return cpu_launch_file(work) if strategy == "zero3" else ROOT / "launch" / "fsdp2.yaml"


def launch(strategy: str, config: Path, processes: int, log: Path, overrides: list[str] = ()):
    port = str(20000 + int(time.time() * 1000) % 20000)
    return run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_file(strategy, config.parent)),
                "--num_processes", str(processes), "--main_process_port", port, "-m", "bonsai.cli", "train", str(config),
                *overrides], log)


def measure(strategy: str, base: Path, work: Path, args) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / f"phi2_{args.finetune}.yaml").read_text())
    run_dir = work / f"run-{strategy}"
    cfg["model"]["name_or_path"] = str(base)
    cfg["data"].update(path=str(ROOT / "data" / "sample"), max_length=args.length)
    cfg["train"].update(output_dir=str(run_dir), max_steps=args.steps, checkpoint_every=0, micro_batch_size=1,
                        gradient_accumulation_steps=1, global_batch_size=None, log_every=1, keep_checkpoints=3)
    if args.async_checkpoint and strategy == "fsdp2":  # every step's checkpoint handed to a background write
        cfg["train"].update(checkpoint_every=1, async_checkpoint=True)
    cfg["train"].pop("global_batch_size", None)
    cfg["eval"] = {"every_steps": 0, "probes": None, "max_batches": 1}
    cfg["logging"] = {"progress_bar": False}
    config = work / f"{strategy}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    wall, peaks, text = launch(strategy, config, 2, work / f"{strategy}-train.log")
    rows = step_rows(run_dir)
    per_step = statistics.median(rows[s]["train/step_seconds"] for s in rows if s > 1)
    saved = [float(x) for x in re.findall(r"checkpoint step_\d+ written in ([\d.]+) s", text)]
    handed = [float(x) for x in re.findall(r"handed to a background write after ([\d.]+) s", text)]
    if handed:
        print(f"{strategy}: background checkpoints handed off after {', '.join(map(str, handed))} s (training "
              f"went on); the foreground final checkpoint took {max(saved)} s", flush=True)
    final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    resumed = {}
    for processes in (2, 1):
        kept = work / f"{strategy}-kept"
        import shutil

        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(run_dir, kept)
        seconds, resume_peaks, _ = launch(strategy, config, processes, work / f"{strategy}-resume{processes}.log",
                                          [f"train.max_steps={args.steps + 1}"])
        resumed[processes] = (seconds, max(v for k, v in resume_peaks.items() if k.isdigit()))
        shutil.rmtree(run_dir)
        kept.rename(run_dir)
    return {"wall": wall, "per_step": per_step, "peaks": {k: v for k, v in peaks.items() if k.isdigit()},
            "checkpoint_s": max(saved) if saved else None, "checkpoint_bytes": size, "resumed": resumed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--finetune", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--strategies", nargs="+", default=["zero3", "fsdp2"], choices=["zero3", "fsdp2"])
    parser.add_argument("--async-checkpoint", action="store_true",
                        help="FSDP2: a checkpoint every step, written in the background (train.async_checkpoint)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bonsai-fsdp2-"))
    work.mkdir(parents=True, exist_ok=True)
    base = build_base(work, args.layers)
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    print(f"model: Phi-2 width, {args.layers} layers, {size / 4 / 1e9:.2f} B parameters ({size / 2**30:.1f} GiB fp32), "
          f"{args.finetune}, 2 CPU processes, rows of {args.length} tokens, 1 row per rank and step", flush=True)
    print("| strategy | s/step | peak RSS per rank (GiB) | checkpoint s | checkpoint GiB | resume on 2: s, peak GiB "
          "| resume on 1: s, peak GiB |\n|---|---|---|---|---|---|---|")
    for strategy in args.strategies:
        m = measure(strategy, base, work, args)
        peaks = ", ".join(f"{v:.2f}" for v in m["peaks"].values())
        print(f"| {strategy} | {m['per_step']:.1f} | {peaks} | {m['checkpoint_s']} | {m['checkpoint_bytes'] / 2**30:.2f} "
              f"| {m['resumed'][2][0]:.0f}, {m['resumed'][2][1]:.2f} | {m['resumed'][1][0]:.0f}, {m['resumed'][1][1]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
