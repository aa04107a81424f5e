"""Bonsai's own cost: `bonsai train` against a bare PyTorch loop on the same model and the same rows, on CPU.

    .venv/bin/python bench/framework_cost.py   # --runs 3 --steps 60 --warmup 10 --max-length 256 --rows 8

The shape of bench/vs_trl.py: a random-init Phi (hidden 256, 4 layers, 8 heads, vocabulary 2048) saved
with save_pretrained, the 302 sample records, max length 256, 8 rows per step, fp32, one process.

- bonsai: `bonsai train` with everything on that a user gets by default: per-record losses, the monitor
  (its host sync every step), the data log, exact-resume bookkeeping, a metrics row every step, the final
  checkpoint and model (after the timed steps). Extra `bonsai train` overrides can be given with
  `--bonsai-set key=value` (e.g. `model.loss_chunk_above_mib=0` to always chunk the loss).
- bare: AutoModelForCausalLM loaded from the same directory (sdpa), AdamW with Bonsai's betas and
  the same cosine schedule, gradient clipping at 1.0, and nothing else: no logging, no host sync.

Fairness: the bare loop trains on Bonsai's own rows. It builds them with Bonsai's data code (same
seed, same best-fit packing, same pad to max_length) before its clock starts, and feeds the collated
tensors as plain dense rows: input ids and labels only, so sdpa runs its plain causal kernel over the
whole row (more attention work than Bonsai's per-document attention, no mask, no document bookkeeping).
Both sides therefore compute on the same slots and count the same real tokens per step; the cross-entropy
is over the same response tokens. `--bare-rows dense` instead gives the bare loop rows of the same
records' tokens concatenated with no padding (every slot a real token: what issue 28's first figure
measured).

Each side runs in its own process, alternating (bonsai, bare, bonsai, bare, ...); rates are real (non-pad)
tokens per second over steps warmup+1..steps, from wall-clock stamps at the end of each step (Bonsai's
metrics.jsonl `time`), so data, forward, backward, update and logging are all inside. The ratio is each
Bonsai run over the bare run after it.
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

import yaml

from common import LR, ROOT, SEED, SHAPE, WARMUP_STEPS, bonsai_config, build_model, step_rows


def with_overrides(cfg: dict, overrides: list[str]) -> dict:
    from bonsai.config import apply_overrides

    return apply_overrides(cfg, overrides)


def bonsai_side(model_dir: Path, work: Path, args) -> dict:
    """`bonsai train` in a process of its own (see bonsai_worker)."""
    run_dir = work / f"bonsai-{time.time_ns()}"
    overrides = args.bonsai_set + ([f"distributed.threads_per_process={args.threads}"] if args.threads else [])
    config = work / f"{run_dir.name}.yaml"
    config.write_text(yaml.safe_dump(with_overrides(bonsai_config(model_dir, run_dir, args), overrides)), encoding="utf-8")
    stamps = work / f"{run_dir.name}.stamps.json"
    cmd = [sys.executable, __file__, "--worker", "bonsai", "--work", str(work), "--config", str(config),
           "--stamps", str(stamps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT,
                          env=os.environ | {"WANDB_MODE": "disabled"})
    if proc.returncode:
        raise RuntimeError(f"bonsai train exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ends = {int(k): v for k, v in json.loads(stamps.read_text()).items()}
    rows = step_rows(run_dir)
    first, last = rows[args.warmup], rows[args.steps]
    return {
        **rates(ends, args),
        "tokens": last["train/num_input_tokens_seen"] - first["train/num_input_tokens_seen"],
        "final_loss": last["train/loss"],
        "log": [line for line in proc.stdout.splitlines() if line.startswith(("attention:", "compile"))],
    }


def rates(ends: dict[int, tuple[float, float]], args) -> dict:
    """Wall and process CPU seconds over steps warmup+1..steps from (wall, cpu) stamps at each step's end."""
    (wall0, cpu0), (wall1, cpu1) = ends[args.warmup], ends[args.steps]
    return {"seconds": wall1 - wall0, "cpu_seconds": cpu1 - cpu0}


def bonsai_worker(config: Path, stamps: Path) -> None:
    """`bonsai train CONFIG` through the CLI, in this process, with one more callback last in the list: a
    clock that stamps wall and process CPU time at the end of every step (after every other callback)."""
    import bonsai.train.trainer as trainer_module
    from bonsai.cli import main as cli_main
    from bonsai.train.callbacks import Callback

    ends: dict[int, tuple[float, float]] = {}

    class StepClock(Callback):
        name = "bench_clock"

        def post_step(self, outcome) -> None:
            ends[outcome.step] = (time.time(), time.process_time())

    build = trainer_module.build_callbacks
    trainer_module.build_callbacks = lambda *a, **k: build(*a, **k) + [StepClock()]
    code = cli_main(["train", str(config)])
    stamps.write_text(json.dumps(ends), encoding="utf-8")
    sys.stdout.flush()
    os._exit(code)


def bonsai_rows(model_dir: Path, args) -> tuple[list, int]:
    """The rows Bonsai trains on, in its order: the same data code, seed and packing."""
    from transformers import AutoTokenizer

    from bonsai.config import BonsaiConfig
    from bonsai.data.dataset import RankData
    from bonsai.data.template import use_template

    cfg = BonsaiConfig.model_validate(bonsai_config(model_dir, Path("unused"), args))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    use_template(tokenizer, cfg.model.template)
    data = RankData(cfg.data, tokenizer, seed=SEED, rank=0, world_size=1)
    rows = data.rows("train")
    return [[next(rows) for _ in range(args.rows)] for _ in range(args.steps)], tokenizer.pad_token_id


def bare_batches(model_dir: Path, args):
    """(input_ids, labels, real tokens) per step, collated before the clock starts."""
    import torch

    from bonsai.data.packing import collate
    from bonsai.data.template import IGNORE_INDEX

    steps, pad_id = bonsai_rows(model_dir, args)
    if args.bare_rows == "packed":
        out = []
        for rows in steps:
            batch = collate(rows, pad_id, args.max_length)
            out.append((batch.input_ids, batch.labels, int((batch.doc_index >= 0).sum())))
        return out
    # dense: the same documents' tokens end to end, cut into full rows
    ids = [t for rows in steps for row in rows for d in row.documents for t in d.encoded.input_ids]
    labels = [t for rows in steps for row in rows for d in row.documents for t in d.encoded.labels]
    per_step = args.rows * args.max_length
    out = []
    for s in range(len(ids) // per_step):
        cut = slice(s * per_step, (s + 1) * per_step)
        out.append((torch.tensor(ids[cut]).view(args.rows, -1), torch.tensor(labels[cut]).view(args.rows, -1),
                    per_step))
    assert all((b[1] != IGNORE_INDEX).any() for b in out)
    return out[: args.steps]


def bare_worker(model_dir: Path, args) -> dict:
    """Runs in its own process (see main): the loop a user would write by hand."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

    from bonsai.data.template import IGNORE_INDEX

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = bare_batches(model_dir, args)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, WARMUP_STEPS, args.steps, min_lr_rate=0.1)
    if args.bare_compile:
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    ends, tokens, loss = {}, [], None
    for input_ids, labels, real in batches:
        logits = model(input_ids=input_ids, use_cache=False).logits
        targets = labels[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum") / (targets != IGNORE_INDEX).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens.append(real)
        ends[len(tokens)] = (time.time(), time.process_time())
    return {**rates(ends, args), "tokens": sum(tokens[args.warmup:args.steps]), "final_loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--bare-rows", choices=["packed", "dense"], default="packed")
    parser.add_argument("--bare-compile", action="store_true", help="compile each decoder layer of the bare loop")
    parser.add_argument("--bonsai-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the bonsai side (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of each side (default: each side's own, all cores for one process); "
                             "1 keeps figures steadier on a machine other work is loading")
    parser.add_argument("--work", default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument("--worker", choices=["bonsai", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--stamps", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.worker == "bonsai":
        return bonsai_worker(Path(args.config), Path(args.stamps))
    work = Path(args.work or tempfile.mkdtemp(prefix="bonsai-framework-cost-"))
    model_dir = build_model(work / "cache")
    if args.worker == "bare":
        print(json.dumps(bare_worker(model_dir, args)))
        return

    import torch
    import transformers

    results: dict[str, list[dict]] = {"bonsai": [], "bare": []}
    worker = [sys.executable, __file__, "--worker", "bare", "--work", str(work), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--max-length", str(args.max_length), "--rows", str(args.rows),
              "--bare-rows", args.bare_rows] + (["--threads", str(args.threads)] if args.threads else []) + (["--bare-compile"] if args.bare_compile else [])
    for run in range(args.runs):
        for side in ("bonsai", "bare"):
            if side == "bonsai":
                raw = bonsai_side(model_dir, work, args)
            else:
                out = subprocess.run(worker, check=True, capture_output=True, text=True, timeout=1800)
                raw = json.loads(out.stdout.strip().splitlines()[-1])
            raw["tokens_per_s"] = raw["tokens"] / raw["seconds"]
            raw["tokens_per_cpu_s"] = raw["tokens"] / raw["cpu_seconds"]
            raw["tokens_per_step"] = raw["tokens"] / (args.steps - args.warmup)
            results[side].append(raw)
            print(f"run {run + 1} {side:6s} total {raw['tokens_per_s']:8.0f} tok/s wall, {raw['tokens_per_cpu_s']:8.0f} "
                  f"tok per CPU-s  tokens/step {raw['tokens_per_step']:.0f}  final loss {raw['final_loss']:.3f}  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            for line in raw.get("log", []):
                print(f"    {line}")
    ratios = {rate: [b[rate] / r[rate] for b, r in zip(results["bonsai"], results["bare"])]
              for rate in ("tokens_per_s", "tokens_per_cpu_s")}
    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f} at the end; tiny Phi {SHAPE}; max_length {args.max_length}, {args.rows} rows/step "
          f"(bare rows: {args.bare_rows}), threads {args.threads or torch.get_num_threads()}, {args.steps} steps (rates over steps {args.warmup + 1}-{args.steps}), "
          f"{args.runs} runs each; bonsai overrides: {args.bonsai_set or 'none'}")
    for rate, what in (("tokens_per_s", "total tokens/s (wall)"), ("tokens_per_cpu_s", "total tokens per CPU-second")):
        for side in ("bonsai", "bare"):
            got = [r[rate] for r in results[side]]
            print(f"{side:6s} {what}: median {statistics.median(got):.0f} (min {min(got):.0f}, max {max(got):.0f})")
        print(f"Bonsai / bare, {what}, pair by pair: {', '.join(f'{r:.3f}' for r in ratios[rate])}; median "
              f"{statistics.median(ratios[rate]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratios": ratios}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
