"""Where a Bonsai step's time goes, against the bare loop of bench/framework_cost.py: one process per side.

    .venv/bin/python bench/framework_profile.py   # --steps 30 --warmup 10 --threads 1 --ops

Same model, data, rows and shape as bench/framework_cost.py. Each side trains `--steps` steps, in the
same process in three phases:

1. timed: every region of the step is wrapped in a timer of the main thread's CPU time (inclusive: a
   region holds the regions indented under it); medians per step over the steps after `--warmup`. With
   `--threads 1` (the default) every op runs on that thread, so the figures hold on a machine other work
   is loading, where wall-clock ones do not;
2. one step with the host-sync counter on (bonsai.observe.host_syncs: `.item()`, `.tolist()`, `nonzero`,
   boolean-mask indexing, `equal`, ...: the points where a GPU run would wait), per region;
3. with `--ops`, one step under torch.profiler: the aten ops that took the most CPU time, both sides.

Bonsai runs in-process through the same Trainer `bonsai train` uses (setup, fit), its functions wrapped
by name; nothing in bonsai/ knows it is measured. The timers cost about a microsecond per call.
Run it against another checkout with PYTHONPATH pointing there (the "before" of bench/RESULTS.md, issue 28).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from framework_cost import LR, SEED, WARMUP_STEPS, bare_batches, bonsai_config, build_model, with_overrides


class Regions:
    """Inclusive wall time and host syncs per named region, per step."""

    def __init__(self):
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.syncs: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.step = 0
        self.order: list[str] = []
        self.counter = None  # a HostSyncCounter while one step is counted
        self.depth = 0
        self.depths: dict[str, int] = {}

    @contextmanager
    def region(self, name: str):
        if name not in self.depths:
            self.order.append(name)
            self.depths[name] = self.depth
        self.depth += 1
        syncs = self.counter.total if self.counter else 0
        begun = time.thread_time()
        try:
            yield
        finally:
            self.seconds[self.step][name] += time.thread_time() - begun
            if self.counter:
                self.syncs[self.step][name] += self.counter.total - syncs
            self.depth -= 1

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        regions = self

        def timed(*args, **kwargs):
            with regions.region(name):
                return original(*args, **kwargs)

        timed.__wrapped__ = original
        setattr(owner, attribute, timed)


def report(regions: Regions, timed_steps: list[int], sync_step: int, extra: dict) -> dict:
    rows = []
    for name in regions.order:
        per_step = [regions.seconds[s].get(name, 0.0) * 1e3 for s in timed_steps]
        rows.append({"region": name, "depth": regions.depths[name], "ms": statistics.median(per_step),
                     "syncs": regions.syncs[sync_step].get(name, 0)})
    return {"regions": rows, **extra}


def sync_kinds(counter) -> dict[str, int]:
    return dict(counter.counts)


# --- bonsai ----------------------------------------------------------------------------------------

def bonsai_worker(model_dir: Path, work: Path, args) -> dict:
    import torch
    import transformers
    from transformers import AttentionInterface

    import bonsai.model.attention as attention
    import bonsai.model.loss as loss_module
    import bonsai.observe.monitor as monitor
    import bonsai.train.step as step_module
    import bonsai.train.trainer as trainer_module
    from bonsai.config import BonsaiConfig
    from bonsai.model.loss_head import ChunkedLossHead
    from bonsai.observe.host_syncs import HostSyncCounter
    from bonsai.observe.metrics import FanOut
    from bonsai.train import callbacks as cb
    from bonsai.train.distributed import (SETUP_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD, set_cpu_threads,
                                          set_malloc_mmap_threshold, setup_distributed)
    from bonsai.train.update_guard import UpdateGuard

    overrides = args.bonsai_set + ([f"distributed.threads_per_process={args.threads}"] if args.threads else [])
    cfg = BonsaiConfig.model_validate(with_overrides(bonsai_config(model_dir, work / f"profile-{time.time_ns()}", args),
                                                     overrides))
    regions = Regions()
    wrap = regions.wrap
    # The step, in the order the loop runs it (see Trainer.fit).
    wrap(trainer_module.TrainRows, "take", "data: read, tokenize, pack (TrainRows.take)")
    wrap(trainer_module, "micro_batches_of", "collate (micro_batches_of)")
    wrap(trainer_module, "compute_gradients", "forward + backward + clip (compute_gradients)")
    wrap(step_module, "forward_loss", "forward_loss")
    wrap(transformers.PhiForCausalLM, "forward", "model forward (PhiForCausalLM.forward)")
    wrap(transformers.PhiModel, "forward", "decoder stack")
    wrap(attention, "document_buckets", "grouping records for attention (document_buckets)")
    wrap(ChunkedLossHead, "forward", "loss head forward (chunked logits + loss + its grads)")
    wrap(loss_module, "_last_target_loss", "EOS loss per record")
    wrap(cb.MonitorCallback, "judge", "monitor: judge (host sync, record stats, detector)")
    wrap(monitor.RecordLossTracker, "update", "record loss tracker")
    if hasattr(step_module.StepStats, "host"):  # since issue 28: the step's one read of its values
        wrap(step_module.StepStats, "host", "the step's values to the host (StepStats.host)")
    wrap(trainer_module.TrainRows, "advance", "exact resume: advance positions")
    wrap(trainer_module.Trainer, "_action", "monitor: the strongest action (_action)")
    wrap(UpdateGuard, "check", "update guard")
    wrap(trainer_module.Trainer, "_log_step", "log the step (_log_step)")
    wrap(trainer_module, "train_breakdown", "loss by category and language (train_breakdown)")
    wrap(cb.Callbacks, "step_metrics", "callbacks' step metrics")
    wrap(FanOut, "log", "loggers (metrics.jsonl, console)")
    wrap(cb.Callbacks, "post_step", "post_step callbacks")
    wrap(cb.DataLogCallback, "post_step", "data log")
    wrap(cb.ThroughputCallback, "post_step", "throughput")
    wrap(cb.MemoryCallback, "post_step", "memory")
    wrap(cb.MonitorCallback, "post_step", "monitor: run health")
    # The attention function as transformers looks it up (a registry, not the module attribute).
    varlen = AttentionInterface._global_mapping[attention.VARLEN]

    def timed_attention(*a, **k):
        with regions.region("attention (sdpa_varlen, forward)"):
            return varlen(*a, **k)

    AttentionInterface.register(attention.VARLEN, timed_attention)

    accumulation = cfg.check_world_size(1)
    set_cpu_threads(cfg.distributed.threads_per_process)
    # As bonsai.train.trainer.train does: the allocator's settings are part of Bonsai's cost (issue 28).
    set_malloc_mmap_threshold(SETUP_MMAP_THRESHOLD)
    dist = setup_distributed(cfg, accumulation)
    trainer = trainer_module.Trainer(cfg, dist, accumulation, time.perf_counter())
    assert trainer.setup() is None
    set_malloc_mmap_threshold(TRAINING_MMAP_THRESHOLD)
    strategy = dist.strategy
    wrap(strategy, "backward", "backward")
    wrap(strategy, "clip_grad_norm", "clip_grad_norm")
    wrap(strategy, "step", "optimizer step + schedule + zero_grad (Strategy.step)")
    wrap(dist, "sum", "step totals (Dist.sum, one rank: none)")

    step_seconds: dict[int, float] = {}
    counter_box, profile_box = {}, {}
    timed_last = args.steps - 2
    sync_step, ops_step = args.steps - 1, args.steps

    class Clock(cb.Callback):
        name = "bench_clock"

        def setup(self, t) -> None:
            super().setup(t)
            self.begun = time.thread_time()

        def post_step(self, outcome) -> None:
            now = time.thread_time()
            step_seconds[outcome.step] = now - self.begun
            if outcome.step == sync_step:
                counter_box["counter"].__exit__(None, None, None)
                regions.counter = None
            if outcome.step == ops_step and args.ops:
                profile_box["profiler"].__exit__(None, None, None)
            regions.step = outcome.step + 1
            if regions.step == sync_step:
                counter_box["counter"] = HostSyncCounter().__enter__()
                regions.counter = counter_box["counter"]
            if regions.step == ops_step and args.ops:
                profile_box["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                profile_box["profiler"].__enter__()
            self.begun = time.thread_time()

    clock = Clock()
    clock.setup(trainer)
    trainer.callbacks.callbacks.append(clock)
    regions.step = 1
    assert trainer.fit() is None
    trainer.close()
    timed = list(range(args.warmup + 1, timed_last + 1))
    extra = {"step_ms": statistics.median(step_seconds[s] * 1e3 for s in timed),
             "tokens_per_step": None, "sync_kinds": sync_kinds(counter_box["counter"])}
    if args.ops:
        extra["ops"] = profile_box["profiler"].key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops)
    return report(regions, timed, sync_step, extra)


# --- the bare loop ---------------------------------------------------------------------------------

def bare_worker(model_dir: Path, args) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForCausalLM, AttentionInterface, get_cosine_with_min_lr_schedule_with_warmup

    from bonsai.data.template import IGNORE_INDEX
    from bonsai.observe.host_syncs import HostSyncCounter

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = bare_batches(model_dir, args)
    regions = Regions()
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, WARMUP_STEPS, args.steps, min_lr_rate=0.1)
    regions.wrap(transformers.PhiForCausalLM, "forward", "model forward (PhiForCausalLM.forward)")
    regions.wrap(transformers.PhiModel, "forward", "decoder stack")
    sdpa = AttentionInterface._global_mapping["sdpa"]

    def timed_attention(*a, **k):
        with regions.region("attention (sdpa, forward)"):
            return sdpa(*a, **k)

    AttentionInterface.register("sdpa", timed_attention)
    step_seconds, sync_step, ops_step = {}, args.steps - 1, args.steps
    counter, profiler = None, None
    for n, (input_ids, labels, _) in enumerate(batches, start=1):
        regions.step = n
        if n == sync_step:
            counter = HostSyncCounter().__enter__()
            regions.counter = counter
        if n == ops_step and args.ops:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        begun = time.thread_time()
        logits = model(input_ids=input_ids, use_cache=False).logits
        with regions.region("loss (whole-row logits, cross_entropy)"):
            targets = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum") / (targets != IGNORE_INDEX).sum()
        with regions.region("backward"):
            loss.backward()
        with regions.region("clip_grad_norm_"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with regions.region("optimizer step + schedule + zero_grad"):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step_seconds[n] = time.thread_time() - begun
        if n == sync_step:
            counter.__exit__(None, None, None)
            regions.counter = None
        if n == ops_step and args.ops:
            profiler.__exit__(None, None, None)
    timed = list(range(args.warmup + 1, args.steps - 1))
    extra = {"step_ms": statistics.median(step_seconds[s] * 1e3 for s in timed), "sync_kinds": sync_kinds(counter)}
    if args.ops:
        extra["ops"] = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops)
    return report(regions, timed, sync_step, extra)


def print_side(name: str, result: dict) -> None:
    print(f"\n{name}: {result['step_ms']:.1f} ms CPU per step (median)")
    accounted = 0.0
    for row in result["regions"]:
        indent = "  " * row["depth"]
        if row["depth"] == 0:
            accounted += row["ms"]
        print(f"  {indent}{row['region']:<{64 - len(indent)}} {row['ms']:8.2f} ms  {row['syncs']:3d} syncs")
    print(f"  {'(between regions: the loop itself)':<64} {result['step_ms'] - accounted:8.2f} ms")
    print(f"  host syncs in one step, by kind: {result['sync_kinds'] or 'none'} "
          f"(total {sum(result['sync_kinds'].values())})")
    if result.get("ops"):
        print(result["ops"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ops", type=int, default=0, help="also print this many top aten ops of one step")
    parser.add_argument("--bonsai-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", default=None)
    parser.add_argument("--worker", choices=["bonsai", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    args.bare_rows, args.bare_compile = "packed", False
    work = Path(args.work or tempfile.mkdtemp(prefix="bonsai-framework-profile-"))
    model_dir = build_model(work / "cache")
    if args.worker:
        result = bonsai_worker(model_dir, work, args) if args.worker == "bonsai" else bare_worker(model_dir, args)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for side in ("bonsai", "bare"):
        cmd = [sys.executable, __file__, "--worker", side, "--work", str(work), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--max-length", str(args.max_length), "--rows", str(args.rows),
               "--threads", str(args.threads), "--ops", str(args.ops)]
        cmd += [f"--bonsai-set={s}" for s in args.bonsai_set]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if out.returncode:
            raise SystemExit(f"{side} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
        results[side] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
        print_side(side, results[side])
    print(f"\nBonsai / bare step time: {results['bonsai']['step_ms'] / results['bare']['step_ms']:.3f}; "
          f"{args.threads} thread(s), {args.steps} steps, timed {args.warmup + 1}-{args.steps - 2}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
