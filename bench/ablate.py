"""Does removing the report's suspects help? The README's "my loss is jumpy" walkthrough, run as a user
runs it, on a planted set and on the clean sample:

    train (configs/demo.yaml as shipped; data, steps, run dir and model cache changed) -> bonsai data
    clean --from-report RUN --top K -> bonsai ablate CONFIG --exclude excluded.jsonl --seeds N

The first training is the ablation's baseline for the first seed (ablate reuses it). Prints, per set,
how many of the excluded records were planted, and ablate's table (baseline and cleaned means over
the seeds, difference, noise band, verdict); leaves ablate.json and ablate.png under --work.

    .venv/bin/python bench/ablate.py --work /tmp/ablate     # --steps 200 --seeds 3 --ratio 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from common import ROOT, run_bonsai

sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_shards  # noqa: E402  (planted.py imports conftest too)
from planted import varied_planted_set  # noqa: E402

from bonsai.data.records import in_eval_split  # noqa: E402


def bonsai(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "bonsai.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=4 * 3600, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        raise RuntimeError(f"bonsai {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def walkthrough(work: Path, records: list[dict], planted: set[str], top: int, steps: int, seeds: int) -> None:
    data = write_shards(work / "data", records)
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"]["path"] = str(data)
    cfg["model"]["cache_dir"] = str(work.parent / "model-cache")
    baseline = work / "ab" / f"baseline-seed{cfg['train']['seed']}"
    cfg["train"].update(output_dir=str(baseline), max_steps=steps)
    config = work / "demo.yaml"
    if not (baseline / "summary.json").exists():
        run_bonsai(cfg, config)
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    if not (work / "clean" / "excluded.jsonl").exists():
        bonsai("data", "clean", "--from-report", str(baseline), "--top", str(top), "--out", str(work / "clean"))
    excluded = [json.loads(line)["id"] for line in (work / "clean" / "excluded.jsonl").read_text().splitlines()]
    trained = [i for i in planted if not in_eval_split(i, cfg["data"]["eval_fraction"])]
    print(f"excluded {len(excluded)}: {len(set(excluded) & planted)} planted "
          f"(of {len(planted)} planted, {len(trained)} of them in the training split)")
    print(bonsai("ablate", str(config), "--exclude", str(work / "clean" / "excluded.jsonl"), "--seeds", str(seeds),
                 "--out", str(work / "ab")), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="runs and reports go here (reused when rerun)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--planted-seed", type=int, default=0)
    args = parser.parse_args()
    records, kinds = varied_planted_set(args.planted_seed, args.ratio)
    print(f"== planted set ({args.ratio:.0%}, seed {args.planted_seed}): {len(records)} records, {len(kinds)} "
          f"planted; --top {len(kinds)}")
    walkthrough(args.work / "planted", records, set(kinds), len(kinds), args.steps, args.seeds)
    clean = [r for r in records if r["id"] not in kinds]
    print(f"== clean sample: {len(clean)} records; --top {len(kinds)}")
    walkthrough(args.work / "clean", clean, set(), len(kinds), args.steps, args.seeds)


if __name__ == "__main__":
    main()
