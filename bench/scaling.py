"""Scaling on CPU: 1 vs 2 processes under DDP, ZeRO-2 and ZeRO-3: step time and memory per rank.

    .venv/bin/python bench/scaling.py          # --steps 30 --warmup 5 --runs 2

Strong scaling: the global batch is fixed (8 packed rows of 256 tokens per step), so 1 process runs 2
micro-batches of 4 per step and 2 processes one each. The machine's cores are split between the
processes (OMP_NUM_THREADS = cores / processes), so the figures show what a second rank buys on the
same hardware, and what ZeRO's extra communication costs over gloo. Memory per rank: Bonsai's own
accounting of parameters, gradients, optimizer state and master weights (printed by every rank after
its first update), and rank 0's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, SHAPE, run_bonsai, step_rows

ACCOUNTING = re.compile(r"rank (\d+): params ([\d.]+) MiB, grads ([\d.]+) MiB, optimizer ([\d.]+) MiB, "
                        r"master_weights ([\d.]+) MiB")


def run(layout: str, nproc: int, work: Path, args) -> dict:
    run_dir = work / f"{layout}-{nproc}-{time.time_ns()}"
    cfg = {
        "model": {"name_or_path": "tiny-phi", "cache_dir": str(work / "cache"), "tiny": SHAPE},
        "data": {"path": str(ROOT / "data" / "sample"), "max_length": 256, "packing": True, "eval_fraction": 0.0},
        "train": {"output_dir": str(run_dir), "seed": 42, "max_steps": args.steps, "micro_batch_size": 4,
                  "global_batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "precision": "fp32", "log_every": 1,
                  "checkpoint_every": 0},
        "eval": {"every_steps": 0, "probes": None},
        "logging": {"progress_bar": False, "wandb": {"mode": "disabled"}},
        "distributed": {"timeout_s": 300},
        "monitor": {"on_nonfinite": "rollback"},  # `skip` does not exist under DeepSpeed; the same for every layout
    }  # fmt: skip
    how = ["--multi_gpu"] if layout == "ddp" else ["--config_file", str(ROOT / "launch" / f"{layout}.yaml")]
    launch = [*how, "--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    if layout == "ddp" and nproc == 1:  # Accelerate refuses --multi_gpu with one process: plain `bonsai train`
        launch = None
    threads = max(1, (os.cpu_count() or 2) // nproc)
    proc = run_bonsai(cfg, work / f"{run_dir.name}.yaml", launch,
                      env={"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"})
    rows = step_rows(run_dir)
    memory = {int(m[1]): [float(x) for x in m.groups()[1:]] for m in ACCOUNTING.finditer(proc.stdout + proc.stderr)}
    per_rank = max(sum(v) for v in memory.values())
    return {
        "step_s": (rows[args.steps]["time"] - rows[args.warmup]["time"]) / (args.steps - args.warmup),
        "state_mib_per_rank": per_rank,
        "breakdown_mib": memory[0],
        "rss_gb_rank0": rows[args.steps].get("memory/max_rss_gb"),
        "final_loss": rows[args.steps]["train/loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=["ddp", "zero2", "zero3"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bonsai-scaling-"))
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.runs):  # alternate, so drift hits every layout alike
        for layout in args.layouts:
            for nproc in (1, 2):
                r = run(layout, nproc, work, args)
                results.setdefault((layout, nproc), []).append(r)
                print(f"{layout:6s} x{nproc}: {r['step_s'] * 1000:7.1f} ms/step  state/rank {r['state_mib_per_rank']:6.1f} MiB "
                      f"(params, grads, optimizer, master {r['breakdown_mib']})  rss0 {r['rss_gb_rank0']:.2f} GB  "
                      f"loss {r['final_loss']:.4f}", flush=True)
    print(f"\n{os.cpu_count()} CPUs; tiny Phi {SHAPE}; global batch 8 x 256 tokens; {args.steps} steps, timed "
          f"{args.warmup + 1}-{args.steps}; median of {args.runs} runs")
    print(f"{'layout':8s} {'1 proc ms/step':>15s} {'2 procs ms/step':>16s} {'speed-up':>9s} {'MiB/rank 1p':>12s} {'MiB/rank 2p':>12s}")
    for layout in args.layouts:
        one, two = results[(layout, 1)], results[(layout, 2)]
        t1, t2 = statistics.median(r["step_s"] for r in one), statistics.median(r["step_s"] for r in two)
        print(f"{layout:8s} {t1 * 1000:15.1f} {t2 * 1000:16.1f} {t1 / t2:9.2f} {one[0]['state_mib_per_rank']:12.1f} "
              f"{two[0]['state_mib_per_rank']:12.1f}")


if __name__ == "__main__":
    main()
