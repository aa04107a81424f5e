"""What a relaunch costs before its first step: the start-up scan on the first launch against a relaunch
into the same run dir (a SLURM requeue, a resume with a longer max_steps), through `bonsai train` as users
run it.

    .venv/bin/python bench/relaunch.py                # --records 100000 --shards 8 --procs 1

The records are the shipped sample, repeated with new ids into shards. Each launch trains one step of the
demo's tiny Phi; the figures are the scan time each launch reports ("scanned in X s") and the whole
command's wall time. `--no-cache` removes RUN_DIR/scan_cache before the relaunch: the cost without it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, run_bonsai
from data_pipeline import write_dataset

SCANNED = re.compile(r"scanned in ([0-9.]+) s \((\d+) of (\d+) shard parts")


def launch(cfg: dict, work: Path, steps: int, procs: int) -> tuple[float, float, str]:
    cfg["train"]["max_steps"] = steps
    launcher = None if procs == 1 else ["--config_file", str(ROOT / "launch" / "ddp.yaml"), "--num_processes", str(procs)]
    begun = time.perf_counter()
    proc = run_bonsai(cfg, work / "bench.yaml", launcher)
    wall = time.perf_counter() - begun
    found = SCANNED.search(proc.stdout + proc.stderr)
    return float(found.group(1)), wall, f"{found.group(2)} of {found.group(3)} parts cached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bonsai-relaunch-"))
    data_dir = write_dataset(work / "data", args.records, args.shards)
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["model"]["cache_dir"] = str(work / "cache")
    cfg["data"]["path"] = str(data_dir)
    cfg["train"].update(output_dir=str(work / "run"), checkpoint_every=0, warmup_steps=0)
    cfg["eval"] = {"every_steps": 0, "probes": None}
    cfg["logging"] = {"progress_bar": False, "wandb": {"mode": "disabled"}}
    launch(cfg, work, 1, args.procs)  # builds the tiny model's cache, so both timed launches find it
    shutil.rmtree(work / "run")

    first = launch(cfg, work, 1, args.procs)
    if args.no_cache:
        shutil.rmtree(work / "run" / "scan_cache")
    again = launch(cfg, work, 2, args.procs)
    print(f"{args.records:,} records in {args.shards} shard(s), {args.procs} process(es)")
    print(f"first launch: scan {first[0]:7.3f} s, whole command {first[1]:6.1f} s ({first[2]})")
    print(f"relaunch:     scan {again[0]:7.3f} s, whole command {again[1]:6.1f} s ({again[2]})")
    print(f"relaunch scan / first scan: {again[0] / first[0]:.3f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
