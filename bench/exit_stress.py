"""Clean exits under load: N consecutive 2-process runs of the LoRA ZeRO-3 configuration (the one whose
rank 1 aborted at exit in CI, "terminate called without an active exception"), `--parallel` at a time
to load the machine. Prints every non-zero exit with its tail, then the count.

    .venv/bin/python bench/exit_stress.py --runs 50 --parallel 2
    .venv/bin/python bench/exit_stress.py --runs 50 --parallel 2 --checkout /tmp/bonsai-before  # another tree

Each run is `accelerate launch --config_file launch/zero3.yaml --num_processes 2 -m bonsai.cli train
configs/phi2_lora.yaml` with the CPU cuts of tests/test_shipped.py (tiny-phi, 128 tokens, 4 steps).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, free_port

CUTS = ["model.name_or_path=tiny-phi", "data.max_length=128", "train.max_steps=4", "eval.decode.max_new_tokens=8",
        "train.precision=auto"]


def one_run(index: int, checkout: Path, scratch: Path, launch_args: list[str]) -> tuple[int, int, float, str]:
    run_dir = scratch / f"run{index:03d}"
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_processes", "2",
               "--main_process_port", str(free_port()), "-m", "bonsai.cli", "train", "configs/phi2_lora.yaml",
               *CUTS, f"train.output_dir={run_dir}", f"model.cache_dir={scratch / 'cache'}"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    return index, proc.returncode, time.perf_counter() - started, (proc.stdout + proc.stderr)[-1500:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the tree to run (default: this one)")
    parser.add_argument("--launch-args", default=f"--config_file {ROOT / 'launch' / 'zero3.yaml'}",
                        help="accelerate launch arguments before --num_processes")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="exit-stress-"))
    one_run(-1, args.checkout, scratch, args.launch_args.split())  # builds the tiny model's cache once
    bad = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for index, code, seconds, tail in pool.map(
                lambda i: one_run(i, args.checkout, scratch, args.launch_args.split()), range(args.runs)):
            print(f"run {index:3d}: exit {code} in {seconds:5.1f} s", flush=True)
            if code:
                bad.append(index)
                print(tail, flush=True)
    print(f"non-zero exits: {len(bad)} of {args.runs} ({args.parallel} at a time); checkout {args.checkout}")


if __name__ == "__main__":
    main()
