"""Bonsai vs TRL's SFTTrainer: the same tiny Phi, records, max length, rows per step and steps, on CPU.

    .venv/bin/pip install -e '.[bench]'   # TRL: not a Bonsai dependency; only this benchmark needs it
    .venv/bin/python bench/vs_trl.py   # --runs 3 --steps 60 --warmup 10 --max-length 256 --rows 8

Each side runs in its own process, alternating (Bonsai, TRL packed, TRL padded, Bonsai, ...), so drift in
the machine's speed hits all alike. Rates are taken over steps warmup+1..steps from wall-clock stamps at
the end of each step (data, forward, backward, update and logging all included):

- trained tokens/s: response tokens (those with a loss) per second;
- total tokens/s: real (non-pad) tokens per second;
- padding fraction: pad slots / all slots the model computed on.

TRL is run two ways: `trl-packed` (packing=True, TRL's default "bfd" strategy, which makes it
padding-free: a step's packed rows are concatenated into one sequence with position_ids, no pad) and
`trl-padded` (one record per row, padded to the longest in the batch; TRL's default). Both train on
the completion only (TRL's default for prompt/completion data), as Bonsai does. "rows per step" is
Bonsai's micro-batch of packed rows and TRL's per-device batch (packed rows, or records when padded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import LR, SAMPLE, SEED, SHAPE, WARMUP_STEPS, bonsai_config, build_model, run_bonsai, step_rows


def bonsai_side(model_dir: Path, work: Path, args) -> dict:
    run_dir = work / f"bonsai-{time.time_ns()}"
    cfg = bonsai_config(model_dir, run_dir, args)
    run_bonsai(cfg, work / f"{run_dir.name}.yaml")
    rows = step_rows(run_dir)
    first, last = rows[args.warmup], rows[args.steps]
    tokens = last["train/num_input_tokens_seen"] - first["train/num_input_tokens_seen"]
    steps = args.steps - args.warmup
    return {
        "seconds": last["time"] - first["time"],
        "tokens": tokens,
        "target_tokens": last["train/num_target_tokens_seen"] - first["train/num_target_tokens_seen"],
        "slots": steps * args.rows * args.max_length,  # packed rows are padded to max_length
        "final_loss": last["train/loss"],
    }


def trl_worker(model_dir: Path, work: Path, args, packed: bool) -> dict:
    """Runs inside its own process (see main)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from bonsai.data.dataset import read_valid_records
    from bonsai.data.template import render_prompt

    records = [r for p in sorted(SAMPLE.glob("*.jsonl")) for r in read_valid_records(str(p))]
    dataset = Dataset.from_list([{"prompt": render_prompt(r), "completion": r.output} for r in records])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = SFTConfig(
        output_dir=str(work / f"trl-{time.time_ns()}"), max_steps=args.steps, per_device_train_batch_size=args.rows,
        gradient_accumulation_steps=1, learning_rate=LR, warmup_steps=WARMUP_STEPS, lr_scheduler_type="cosine",
        max_grad_norm=1.0, max_length=args.max_length, packing=packed, logging_steps=1, save_strategy="no",
        report_to="none", seed=SEED, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)

    per_batch: list[tuple[int, int, int]] = []  # (real tokens, trained tokens, slots) per collated batch
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        real = sum(len(e["input_ids"]) for e in examples)
        per_batch.append((real, int((batch["labels"] != -100).sum()), batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            ends.append(time.time())

    losses = []

    class LossLog(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **_kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer.add_callback(StepClock())
    trainer.add_callback(LossLog())
    trainer.train()
    timed = per_batch[args.warmup : args.steps]  # one collated batch per step (no accumulation)
    return {
        "seconds": ends[args.steps - 1] - ends[args.warmup - 1],
        "tokens": sum(b[0] for b in timed),
        "target_tokens": sum(b[1] for b in timed),
        "slots": sum(b[2] for b in timed),
        "final_loss": losses[-1],
    }


def summarize(result: dict, timed_steps: int) -> dict:
    return {
        "trained_tokens_per_s": result["target_tokens"] / result["seconds"],
        "total_tokens_per_s": result["tokens"] / result["seconds"],
        "padding_fraction": 1 - result["tokens"] / result["slots"],
        "tokens_per_step": result["tokens"] / timed_steps,
        "final_loss": result["final_loss"],
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--work", default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument("--worker", choices=["trl-packed", "trl-padded"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bonsai-vs-trl-"))
    model_dir = build_model(work / "cache")
    if args.worker:
        print(json.dumps(trl_worker(model_dir, work, args, packed=args.worker == "trl-packed")))
        return

    import torch
    import transformers
    import trl

    sides = ["bonsai", "trl-packed", "trl-padded"]
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for run in range(args.runs):
        for side in sides:
            if side == "bonsai":
                raw = bonsai_side(model_dir, work, args)
            else:
                cmd = [sys.executable, __file__, "--worker", side, "--work", str(work), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--max-length", str(args.max_length), "--rows", str(args.rows)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
                raw = json.loads(out.stdout.strip().splitlines()[-1])
            results[side].append(summarize(raw, args.steps - args.warmup))
            r = results[side][-1]
            print(f"run {run + 1} {side:11s} trained {r['trained_tokens_per_s']:8.0f} tok/s  total "
                  f"{r['total_tokens_per_s']:8.0f} tok/s  padding {r['padding_fraction']:.3f}  "
                  f"tokens/step {r['tokens_per_step']:.0f}  final loss {r['final_loss']:.3f}", flush=True)

    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"{os.cpu_count()} CPUs; tiny Phi {SHAPE}; max_length {args.max_length}, {args.rows} rows/step, "
          f"{args.steps} steps (rates over steps {args.warmup + 1}-{args.steps}), {args.runs} runs each")
    print(f"{'':12s} {'trained tok/s (median)':>24s} {'total tok/s (median)':>22s} {'padding':>8s}")
    for side in sides:
        rs = results[side]
        print(f"{side:12s} {statistics.median(r['trained_tokens_per_s'] for r in rs):24.0f} "
              f"{statistics.median(r['total_tokens_per_s'] for r in rs):22.0f} "
              f"{statistics.median(r['padding_fraction'] for r in rs):8.3f}")
    summary = {"results": results, "ratios": {}}
    for other in sides[1:]:
        for metric in ("trained_tokens_per_s", "total_tokens_per_s"):
            ratios = [b[metric] / t[metric] for b, t in zip(results["bonsai"], results[other])]
            summary["ratios"][f"bonsai/{other} {metric}"] = ratios
            print(f"Bonsai/{other} {metric}: min {min(ratios):.2f}  median {statistics.median(ratios):.2f}  "
                  f"max {max(ratios):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
