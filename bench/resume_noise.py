"""The noise band for "a resumed run keeps learning" (tests/test_resume_matrix.py): how far the mean loss
of 10 steps moves between runs that differ only in data order, against how far it moves when the model
stops learning.

The matrix resumes at step 5 and compares the mean train loss of steps 6-15 with an uninterrupted run
of the same global batch (12 rows). A resumed run deals the remaining records to its ranks in another
order than the uninterrupted one, so the comparison must allow for data-order noise: measured here as
the spread of that mean over train.seed (the seed orders the data; the tiny model's init is fixed).
A frozen model's mean is the loss it had when it stopped learning: the mean of steps 6-15 evaluated on
the weights of step 5, approximated by the run's step-5 loss level.

    cd bench && ../.venv/bin/python resume_noise.py [--seeds 8] [--lora]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, run_bonsai, step_rows

RESUME_AT, WINDOW = 5, 10


def config(run_dir: Path, seed: int, lora: bool) -> dict:
    cfg = {
        "model": {"name_or_path": "tiny-phi", "cache_dir": str(ROOT / ".cache" / "models")},
        "data": {"path": str(ROOT / "data" / "sample"), "max_length": 256, "packing": True, "eval_fraction": 0.05},
        "train": {"output_dir": str(run_dir), "seed": seed, "max_steps": RESUME_AT + WINDOW, "micro_batch_size": 4,
                  "gradient_accumulation_steps": 3, "lr": 2e-3, "warmup_steps": 2, "precision": "fp32",
                  "weight_decay": 0.1},
        "eval": {"probes": None, "every_steps": 0},
        "logging": {"progress_bar": False},
    }
    if lora:
        cfg["model"].update(finetune="lora", lora={"r": 8, "alpha": 16, "dropout": 0.0})
        cfg["train"]["lr"] = 3e-3
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()
    means, levels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            run_dir = Path(tmp) / f"seed{seed}"
            run_bonsai(config(run_dir, seed, args.lora), Path(tmp) / f"seed{seed}.yaml")
            rows = step_rows(run_dir)
            window = [rows[s]["train/loss"] for s in range(RESUME_AT + 1, RESUME_AT + WINDOW + 1)]
            means.append(statistics.fmean(window))
            levels.append(rows[RESUME_AT]["train/loss"])
            print(f"seed {seed}: loss at step {RESUME_AT} {levels[-1]:.3f}, mean of steps {RESUME_AT + 1}-"
                  f"{RESUME_AT + WINDOW} {means[-1]:.3f}", flush=True)
    spread = max(means) - min(means)
    print(f"mean of steps {RESUME_AT + 1}-{RESUME_AT + WINDOW} over {args.seeds} seeds: {statistics.fmean(means):.3f}, "
          f"stdev {statistics.stdev(means):.4f}, range {spread:.4f}")
    learned = statistics.fmean(levels) - statistics.fmean(means)
    print(f"learning in the window (step-{RESUME_AT} loss minus the window's mean): {learned:.3f} "
          f"= {learned / statistics.stdev(means):.1f} stdev of the data-order noise")


if __name__ == "__main__":
    main()
