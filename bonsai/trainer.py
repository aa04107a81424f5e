"""`bonsai train`: build everything from the config, train, checkpoint, resume, save.

One code path for one or many ranks, full or LoRA, DDP or ZeRO. The optimizer step lives in
`bonsai.step` (`compute_gradients`, then `apply_update` unless the monitor says otherwise);
rank-awareness stays behind `Dist`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from bonsai.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from bonsai.config import BonsaiConfig, redact, save_resolved
from bonsai.deepspeed_config import fill_deepspeed_config
from bonsai.dataset import RankData, describe_bad_records
from bonsai.distributed import CollectiveFailure, Dist, is_peer_failure, launcher_world_size, setup_distributed
from bonsai.generation import Probe, average_by_category, generate, generation_rows, load_probes
from bonsai.loss import BREAKDOWN_KEYS, breakdown_metrics, breakdown_sums, forward_loss
from bonsai.step import StepStats, apply_update, compute_gradients, micro_batches_of, train_breakdown
from bonsai.metrics import ConsoleLogger, FanOut, JsonlLogger, MetricsLogger, RowFiles
from bonsai.monitor import Event, RecordLossTracker, SpikeDetector, batch_records, strongest_action
from bonsai.model import count_parameters, load_model, numel, load_tokenizer, resolve_checkpoint, save_final_model
from bonsai.packing import Row
from bonsai.preemption import StopRequest, preempted_exit_code, write_stopped
from bonsai.stream import StreamPosition, write_jsonl
from bonsai.throughput import flops_per_token, memory_metrics, peak_flops_per_device, training_state_bytes
from bonsai.wandb_logger import resolve_mode

THROUGHPUT_WARMUP_STEPS = 2  # first steps pay for allocation and kernel selection; not representative


class DataError(ValueError):
    """Bad records under `data.on_bad_record: error`; the message lists file, line and field."""


class TrainRows:
    """This rank's training rows; `position` moves only when a step commits them."""

    def __init__(self, data: RankData, start: StreamPosition):
        self._rows: Iterator[Row] = data.rows("train", start=start)
        self.position = start

    def take(self, n: int) -> list[Row]:
        return [next(self._rows) for _ in range(n)]


def evaluate(dist: Dist, model, data: RankData, cfg: BonsaiConfig, pad_id: int) -> dict[str, float]:
    """Mean response-token loss over the eval split, overall and per category and language.
    Every rank runs the same number of forward passes (ZeRO-3 gathers weights inside forward)."""
    pad_to = cfg.data.max_length if cfg.data.packing else None
    batches = micro_batches_of(list(data.rows("eval", epochs=1)), cfg.train.micro_batch_size, pad_id, pad_to)
    if cfg.eval.max_batches:
        batches = batches[: cfg.eval.max_batches]
    rounds = dist.max(len(batches))
    if rounds == 0:
        return {}
    sums = torch.zeros(len(BREAKDOWN_KEYS), 2, dtype=torch.float64, device=dist.device)
    model.eval()
    with torch.no_grad():
        for i in range(rounds):
            if i >= len(batches):  # this rank ran out: a forward pass that counts for nothing
                model(input_ids=torch.full((1, 1), pad_id, device=dist.device))
                continue
            batch = batches[i]
            out = forward_loss(model, batch.to(dist.device))
            sums += breakdown_sums(batch.records, out.record_loss_sum, out.record_tokens)
    model.train()
    return breakdown_metrics("eval/loss", dist.sum(sums).tolist())  # host sync: eval results are logged


def run_probes(dist: Dist, model, tokenizer, probes: list[Probe], cfg: BonsaiConfig, step: int):
    """Each rank generates its share of the probes at the same time, then one gather: no rank waits on
    another's generation. Returns (rows, metrics averaged per category) on every rank."""
    mine = probes[dist.rank :: dist.world_size]
    records = [p.record for p in mine]
    outputs = generate(dist.accelerator.unwrap_model(model), tokenizer, records, cfg.eval.decode) if mine else []
    rows = generation_rows(records, outputs, [p.reference for p in mine], step)
    rows = sorted((r for per_rank in dist.gather_objects(rows) for r in per_rank), key=lambda r: r["id"])
    return rows, average_by_category(rows, "probe")


def _probe(logger, dist: Dist, model, tokenizer, probes: list[Probe], cfg: BonsaiConfig, step: int) -> None:
    if not probes:
        return
    rows, metrics = run_probes(dist, model, tokenizer, probes, cfg, step)
    if logger:
        logger.log_rows("generations", rows, step)
        logger.log(metrics, step)


def _scan_data(dist: Dist, data: RankData, cfg: BonsaiConfig, run_dir: Path) -> dict[str, int]:
    """Check this rank's share once before training; fail (or quarantine) with every rank's findings."""
    report = data.scan()
    rows = dist.gather_objects(
        ([b.as_quarantine_row() for b in report.bad], [str(b) for b in report.bad],
         report.train_records, report.eval_records, report.train_target_tokens)
    )
    bad_rows = [r for per_rank in rows for r in per_rank[0]]
    bad_text = [t for per_rank in rows for t in per_rank[1]]
    counts = {
        "train_records": sum(r[2] for r in rows),
        "eval_records": sum(r[3] for r in rows),
        "train_target_tokens": sum(r[4] for r in rows),
        "bad_records": len(bad_rows),
    }
    if bad_rows and cfg.data.on_bad_record == "error":
        raise DataError(
            f"data.path {cfg.data.path}: {describe_bad_records(bad_text)}\n"
            "Fix these records, or set data.on_bad_record=skip to train without them (they are then listed "
            f"in {run_dir / 'quarantine.jsonl'})."
        )
    if dist.is_main and bad_rows:
        write_jsonl(run_dir / "quarantine.jsonl", bad_rows)  # path, line, field, reason, raw record
    if counts["train_records"] == 0:
        raise DataError(f"data.path {cfg.data.path}: no training records left (eval split and skips took all)")
    return counts


def _build_optimizer(model, cfg: BonsaiConfig) -> tuple[torch.optim.Optimizer, str]:
    """AdamW, and a line that says which tensors it decays (a lost decay is otherwise silent)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on biases and norms (1-D tensors), as in GPT-style recipes. Under ZeRO-3 a
    # parameter may already be an empty 1-D placeholder: its real shape is `ds_shape`.
    decayed = [p for p in params if len(getattr(p, "ds_shape", p.shape)) >= 2]
    kept = [p for p in params if len(getattr(p, "ds_shape", p.shape)) < 2]
    groups = [{"params": decayed, "weight_decay": cfg.train.weight_decay}, {"params": kept, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.train.lr, betas=cfg.train.adam_betas, eps=cfg.train.adam_eps
    )
    summary = (f"optimizer: AdamW, weight decay {cfg.train.weight_decay} on {len(decayed)} weight matrices "
               f"({sum(numel(p) for p in decayed):,} parameters), none on {len(kept)} biases and norms")
    return optimizer, summary


def _loggers(cfg: BonsaiConfig, run_dir: Path, state: TrainerState, say) -> FanOut:
    loggers: list[MetricsLogger] = [
        JsonlLogger(run_dir / "metrics.jsonl", resume_step=state.step),
        RowFiles(run_dir),
        ConsoleLogger(cfg.train.max_steps, state.step, enabled=cfg.logging.progress_bar),
    ]
    if resolve_mode(cfg.logging.wandb) != "disabled":
        from bonsai.wandb_logger import WandbLogger

        loggers.append(WandbLogger(cfg.logging.wandb, run_dir, redact(cfg.model_dump(mode="json")), say))
    return FanOut(loggers)


class TrainingUnstable(RuntimeError):
    """The monitor asked for more rollbacks than monitor.max_rollbacks allows."""


def record_stats_path(run_dir: Path, rank: int) -> Path:
    """Where the report reads this rank's record statistics (the latest copy)."""
    return run_dir / "record_stats" / f"rank{rank}.json"


def checkpoint_record_stats_path(checkpoint_dir: Path, rank: int) -> Path:
    """This rank's record statistics as of a checkpoint, restored with it."""
    return checkpoint_dir / f"record_stats_rank{rank}.json"


def _monitor_step(dist: Dist, detector: SpikeDetector, tracker: RecordLossTracker, stats: StepStats,
                  step: int, position: StreamPosition) -> list[Event]:
    """Update per-record statistics and run the detector; on an event, attach every rank's records."""
    # host sync: the monitor must decide before the update whether to apply it.
    loss, grad_norm = stats.loss.item(), stats.grad_norm.item()
    losses, tokens = stats.record_loss_sum.tolist(), stats.record_tokens.tolist()
    tracker.update(stats.records, losses, tokens)
    events = detector.check(step, loss, grad_norm)
    if events:  # every rank reached the same decision from the same global values: a safe collective
        gathered = dist.gather_objects((batch_records(stats.records, losses, tokens), position.to_dict()))
        rows = sorted((r for per_rank, _ in gathered for r in per_rank), key=lambda r: r["loss"], reverse=True)
        for event in events:
            event.records, event.data_positions = rows, [p for _, p in gathered]
    return events


def _zero_stage(dist: Dist) -> int:
    plugin = dist.accelerator.state.deepspeed_plugin
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) if plugin else 0


def _configure_deepspeed(dist: Dist, cfg: BonsaiConfig, accumulation: int) -> None:
    plugin = dist.accelerator.state.deepspeed_plugin
    fill_deepspeed_config(plugin.deepspeed_config, cfg, accumulation, dist.world_size,
                          dist.accelerator.mixed_precision,
                          source=os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "the DeepSpeed config"))
    cfg.monitor.for_strategy(deepspeed=True)  # refuses an explicit `skip` before any work


def train(cfg: BonsaiConfig) -> int:
    """Returns the process exit code: 0 done; `preempted_exit_code()` stopped by a signal after checkpointing."""
    started = time.perf_counter()
    accumulation = cfg.check_world_size(launcher_world_size())
    dist = setup_distributed(cfg, accumulation)
    code = _train(cfg, dist, accumulation, started)
    # Only on a clean return, where every rank got here together: tearing the group down while a peer
    # is still inside a collective would hang. Without it, gloo's worker threads outlive the interpreter
    # and a rank can abort at exit ("terminate called without an active exception") after training.
    dist.close()
    return code


def _train(cfg: BonsaiConfig, dist: Dist, accumulation: int, started: float) -> int:
    run_dir = Path(cfg.train.output_dir)
    say = dist.accelerator.print

    with dist.accelerator.main_process_first():
        model_source = resolve_checkpoint(cfg)
    tokenizer = load_tokenizer(model_source, cfg.model)
    data = RankData(cfg.data, tokenizer, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
    counts = _scan_data(dist, data, cfg, run_dir)
    probes = load_probes(cfg.eval.probes) if cfg.eval.probes else []
    say(f"data: {counts['train_records']} train and {counts['eval_records']} eval records in {len(data.shards)} "
        f"shard(s), {counts['bad_records']} bad (quarantined), {counts['train_target_tokens']} response tokens/epoch")

    weights_dtype = torch.float32
    if cfg.model.finetune == "lora" and dist.accelerator.mixed_precision == "bf16":
        weights_dtype = torch.bfloat16  # the frozen base needs no fp32 master copy
    set_seed(cfg.train.seed)  # here, so whatever ran before (building a cache, the data scan) cannot matter
    model = load_model(model_source, cfg.model, weights_dtype)
    total, trainable = count_parameters(model)
    say(f"model: {model_source} ({cfg.model.finetune}), {total:,} parameters, {trainable:,} trainable; "
        f"{dist.world_size} process(es) x micro-batch {cfg.train.micro_batch_size} x accumulation {accumulation}")
    if dist.is_deepspeed:
        _configure_deepspeed(dist, cfg, accumulation)
    optimizer, optimizer_summary = _build_optimizer(model, cfg)
    say(optimizer_summary)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.train.num_warmup_steps, cfg.train.max_steps, min_lr_rate=cfg.train.min_lr_ratio
    )
    model, optimizer, scheduler = dist.accelerator.prepare(model, optimizer, scheduler)

    state = TrainerState(world_size=dist.world_size, data_positions=[StreamPosition().to_dict()] * dist.world_size)
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        state = load_checkpoint(dist, latest)
        say(f"resumed from {latest} at step {state.step}")
    if state.finished:
        say(f"{run_dir} already finished {state.step} steps; nothing to do (use a new output_dir to train again)")
        return 0
    if dist.is_main:
        save_resolved(cfg, run_dir / "config.yaml")
    logger = _loggers(cfg, run_dir, state, say) if dist.is_main else None

    rows = TrainRows(data, state.position_for(dist.rank))
    pad_id = tokenizer.pad_token_id
    pad_to = cfg.data.max_length if cfg.data.packing else None
    detector = SpikeDetector(cfg.monitor.for_strategy(dist.is_deepspeed)) if cfg.monitor.enabled else None
    tracker = RecordLossTracker.load(checkpoint_record_stats_path(latest, dist.rank)) if latest else RecordLossTracker()

    def checkpoint() -> Path:
        begun = time.perf_counter()
        state.data_positions = dist.gather_objects(rows.position.to_dict())
        tracker.save(record_stats_path(run_dir, dist.rank))
        saved = save_checkpoint(dist, run_dir, state, cfg, cfg.train.keep_checkpoints,
                                lambda d: tracker.save(checkpoint_record_stats_path(d, dist.rank)))
        stop.note_checkpoint(time.perf_counter() - begun)
        return saved

    stop = StopRequest.from_env().install()
    flops_per_tok = flops_per_token(model, cfg.data.max_length)
    peak_flops = peak_flops_per_device(cfg.logging.peak_tflops_per_device)
    timed_tokens, timed_seconds, first_loss, last_loss = 0, 0.0, None, None
    accounted: dict[str, float] = {}
    try:
        while state.step < cfg.train.max_steps:
            step_start = time.perf_counter()
            taken = rows.take(cfg.train.micro_batch_size * accumulation)
            batches = micro_batches_of(taken, cfg.train.micro_batch_size, pad_id, pad_to)
            stop_reason = stop.reason
            stats = compute_gradients(dist, model, batches, cfg.train.max_grad_norm, stop_reason is not None)
            if stats.stop_requested:
                saved = checkpoint()
                # Who asked, and why: what the batch script and the user see.
                asked = [f"rank {r}: {why}" for r, why in enumerate(dist.gather_objects(stop_reason)) if why]
                if dist.is_main:
                    write_stopped(run_dir, state.step, saved, "; ".join(asked))
                stop_reason = stop_reason or "by another rank"
                dist.barrier()  # a rank that exits early can make srun kill rank 0 before it wrote that
                # Every rank says why it stops: the one that got the signal is the one to look for.
                print(f"rank {dist.rank}: stop requested ({stop_reason}): "
                      f"checkpointed step {state.step}, exiting with {preempted_exit_code()} "
                      f"(resume: run the same command again)", flush=True)
                return preempted_exit_code()
            events = _monitor_step(dist, detector, tracker, stats, state.step + 1, taken[-1].resume) if detector else []
            action = strongest_action(events)
            rollback_to = latest_checkpoint(run_dir) if action == "rollback" else None
            if action == "rollback" and rollback_to is None:
                if dist.is_deepspeed:  # the engine already applied the update; nothing to go back to
                    raise TrainingUnstable(f"step {state.step + 1}: {events[0].kind} before the first checkpoint; "
                                           f"nothing to roll back to under DeepSpeed")
                action = "skip"  # nothing to roll back to yet: at least keep this step out of the weights
                for e in events:
                    e.action = "skip (no checkpoint yet)" if e.action == "rollback" else e.action
            if logger and events:
                logger.log_rows("events", [e.to_dict() for e in events], state.step + 1)
            rows.position = taken[-1].resume
            if action == "rollback":
                if state.rollbacks >= cfg.monitor.max_rollbacks:
                    raise TrainingUnstable(
                        f"step {state.step + 1}: {events[0].kind} after {state.rollbacks} rollback(s) "
                        f"(monitor.max_rollbacks); see {run_dir / 'events.jsonl'} for the records involved")
                apply_update(optimizer, scheduler, skip=True)
                rollbacks = state.rollbacks + 1
                state = load_checkpoint(dist, rollback_to)
                state.rollbacks = rollbacks
                # The data stream is not rewound: the rows between the checkpoint and this step are skipped.
                say(f"rolled back to {rollback_to.name} (rollback {rollbacks} of at most "
                    f"{cfg.monitor.max_rollbacks}); data continues after step's rows")
                if logger:
                    logger.rewind(state.step)
                continue
            apply_update(optimizer, scheduler, skip=action == "skip")
            state.skipped_steps += action == "skip"
            state.step += 1
            state.tokens_seen += stats.tokens
            state.target_tokens_seen += stats.target_tokens
            elapsed = time.perf_counter() - step_start
            stop.note_step(elapsed)
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps or events:
                metrics = {
                    "loss": stats.loss.item(),  # host sync: logging only
                    "grad_norm": stats.grad_norm.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": stats.tokens / elapsed,
                    "target_tokens_per_s": stats.target_tokens / elapsed,
                    "tokens_seen": state.tokens_seen,
                    "target_tokens_seen": state.target_tokens_seen,
                    "step_time_s": elapsed,
                    "skipped": int(action == "skip"),
                    **memory_metrics(),
                    "data/epoch": rows.position.epoch,
                    "data/taken": rows.position.taken,
                    **train_breakdown(dist, stats),
                }
                if peak_flops:
                    metrics["mfu"] = stats.tokens / elapsed * flops_per_tok / (peak_flops * dist.world_size)
                if math.isfinite(metrics["loss"]):
                    first_loss = metrics["loss"] if first_loss is None else first_loss
                    last_loss = metrics["loss"]
                if logger:
                    logger.log(metrics, state.step)
            if not accounted:  # after the first update, when the optimizer state exists
                accounted = training_state_bytes(model, optimizer, _zero_stage(dist), dist.world_size)
                print(f"rank {dist.rank}: " + ", ".join(f"{k.split('/')[1].removesuffix('_bytes')} "
                                                       f"{v / 2**20:.1f} MiB" for k, v in accounted.items()), flush=True)
                if logger:
                    logger.log(accounted, state.step)
            if state.step > THROUGHPUT_WARMUP_STEPS:
                timed_tokens, timed_seconds = timed_tokens + stats.tokens, timed_seconds + elapsed
            if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < cfg.train.max_steps:
                _log(logger, evaluate(dist, model, data, cfg, pad_id), state.step)
            if cfg.eval.probe_every and state.step % cfg.eval.probe_every == 0 and state.step < cfg.train.max_steps:
                _probe(logger, dist, model, tokenizer, probes, cfg, state.step)
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 \
                    and state.step < cfg.train.max_steps:
                checkpoint()

        _log(logger, evaluate(dist, model, data, cfg, pad_id), state.step)
        _probe(logger, dist, model, tokenizer, probes, cfg, state.step)
        state.finished = True
        checkpoint()
        model_dir = run_dir / "model"
        unwrapped = dist.accelerator.unwrap_model(model)
        state_dict = dist.accelerator.get_state_dict(model)  # a collective under ZeRO-3: every rank gathers
        written = save_final_model(unwrapped, tokenizer, cfg.model, model_dir, state_dict, model_source,
                                   weights_dtype) if dist.is_main else []
        dist.barrier()
        summary = {
            "steps": state.step,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "tokens_per_s": round(timed_tokens / timed_seconds, 1) if timed_seconds else None,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "tokens_seen": state.tokens_seen,
            "skipped_steps": state.skipped_steps,
            "rollbacks": state.rollbacks,
            "model_dirs": [str(p) for p in written],
        }
        if dist.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        say("done: " + json.dumps(summary))
        return 0
    except Exception as err:
        if dist.world_size > 1 and is_peer_failure(err):
            last = latest_checkpoint(run_dir)
            raise CollectiveFailure(
                f"rank {dist.rank}: a collective failed at step {state.step + 1} "
                f"({str(err).splitlines()[0][:200]}). Another rank has probably died or hung: its log says why. "
                f"Last complete checkpoint: {last or 'none'}; running the same command again resumes from it."
            ) from err
        raise
    finally:
        # Loggers first (W&B's finish can take seconds), the signal handler last: a launcher's SIGTERM
        # arriving meanwhile then only sets the flag, and the error above still reaches the user.
        if logger:
            logger.close()
        stop.uninstall()


def _log(logger: MetricsLogger | None, metrics: dict[str, float], step: int) -> None:
    if logger and metrics:
        logger.log(metrics, step)
