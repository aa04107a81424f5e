"""`bonsai train`: build everything from the config, train, checkpoint, resume, save.

One code path for one or many ranks, full or LoRA. The optimizer step is `train_step`, a function of
(model, micro-batches) that tests call alone; rank-awareness stays behind `Dist`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from bonsai.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from bonsai.config import CATEGORIES, LANGUAGES, BonsaiConfig, save_resolved
from bonsai.dataset import RankData, describe_bad_records, write_quarantine
from bonsai.distributed import Dist, setup_distributed
from bonsai.loss import forward_loss
from bonsai.metrics import ConsoleLogger, FanOut, JsonlLogger, MetricsLogger
from bonsai.model import count_parameters, load_model, load_tokenizer, resolve_checkpoint, save_final_model
from bonsai.packing import Batch, Row, collate
from bonsai.preemption import EXIT_PREEMPTED, StopRequest
from bonsai.stream import StreamPosition

THROUGHPUT_WARMUP_STEPS = 2  # first steps pay for allocation and kernel selection; not representative


class DataError(ValueError):
    """Bad records under `data.on_bad_record: error`; the message lists file, line and field."""


@dataclass
class StepStats:
    loss: torch.Tensor  # global mean response-token loss of the step (on device; read it only to log)
    grad_norm: torch.Tensor
    target_tokens: int
    tokens: int
    stop_requested: bool


def train_step(dist: Dist, model, optimizer, scheduler, micro_batches: list[Batch], max_grad_norm: float | None,
               stop_requested: bool = False) -> StepStats:
    """One optimizer step over this rank's micro-batches. Every micro-batch's loss sum is divided by the
    response-token count of the whole step on all ranks, so the gradient is the same however the
    step's rows are split into micro-batches and ranks."""
    accelerator = dist.accelerator
    local = torch.tensor(
        [sum(b.num_target_tokens for b in micro_batches), sum(int((b.doc_index >= 0).sum()) for b in micro_batches),
         int(stop_requested)],
        dtype=torch.float64, device=dist.device,
    )
    totals = dist.sum(local)
    # host sync: every rank must agree whether to stop before anyone starts a forward pass.
    target_tokens, tokens, stops = (int(v) for v in totals.tolist())
    if stops:
        return StepStats(torch.zeros(()), torch.zeros(()), target_tokens, tokens, stop_requested=True)
    # DDP (and ZeRO) average gradients over ranks; scaling by world size turns that average into the sum.
    scale = dist.world_size / target_tokens
    loss_sum = torch.zeros((), device=dist.device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            out = forward_loss(model, batch.to(dist.device))
            accelerator.backward(out.loss_sum * scale)
        loss_sum += out.loss_sum.detach()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(dist.sum(loss_sum) / target_tokens, grad_norm, target_tokens, tokens, stop_requested=False)


class TrainRows:
    """This rank's training rows; `position` moves only when a step commits them."""

    def __init__(self, data: RankData, start: StreamPosition):
        self._rows: Iterator[Row] = data.rows("train", start=start)
        self.position = start

    def take(self, n: int) -> list[Row]:
        return [next(self._rows) for _ in range(n)]


def micro_batches_of(rows: list[Row], size: int, pad_id: int, pad_to: int | None) -> list[Batch]:
    return [collate(rows[i : i + size], pad_id, pad_to) for i in range(0, len(rows), size)]


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
    keys = ["all", *(f"category/{c}" for c in CATEGORIES), *(f"lang/{lang}" for lang in LANGUAGES)]
    slot = {k: i for i, k in enumerate(keys)}
    sums = torch.zeros(len(keys), 2, dtype=torch.float64, device=dist.device)
    model.eval()
    with torch.no_grad():
        for i in range(rounds):
            if i >= len(batches):  # this rank ran out: a forward pass that counts for nothing
                model(input_ids=torch.full((1, 1), pad_id, device=dist.device))
                continue
            batch = batches[i]
            out = forward_loss(model, batch.to(dist.device))
            for r, record in enumerate(batch.records):
                for key in ("all", f"category/{record.category}", f"lang/{record.lang}"):
                    sums[slot[key], 0] += out.record_loss_sum[r].double()
                    sums[slot[key], 1] += out.record_tokens[r].double()
    model.train()
    sums = dist.sum(sums).tolist()  # host sync: eval results are logged
    metrics = {}
    for key, (loss_sum, count) in zip(keys, sums):
        if count:
            metrics["eval/loss" if key == "all" else f"eval/loss/{key}"] = loss_sum / count
    return metrics


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
        write_quarantine(bad_rows, run_dir / "quarantine.jsonl")
    if counts["train_records"] == 0:
        raise DataError(f"data.path {cfg.data.path}: no training records left (eval split and skips took all)")
    return counts


def _build_optimizer(model, cfg: BonsaiConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on biases and norms (1-D tensors), as in GPT-style recipes.
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.train.lr, betas=cfg.train.adam_betas, eps=cfg.train.adam_eps
    )


def _loggers(cfg: BonsaiConfig, run_dir: Path, state: TrainerState) -> MetricsLogger:
    return FanOut([
        JsonlLogger(run_dir / "metrics.jsonl", resume_step=state.step),
        ConsoleLogger(cfg.train.max_steps, state.step, enabled=cfg.logging.progress_bar),
    ])


def train(cfg: BonsaiConfig) -> int:
    """Returns the process exit code: 0 done, EXIT_PREEMPTED stopped by a signal after checkpointing."""
    started = time.perf_counter()
    dist = setup_distributed(cfg)
    accumulation = cfg.check_world_size(dist.world_size)
    run_dir = Path(cfg.train.output_dir)
    say = dist.accelerator.print
    set_seed(cfg.train.seed)

    with dist.accelerator.main_process_first():
        checkpoint = resolve_checkpoint(cfg)
    tokenizer = load_tokenizer(checkpoint, cfg.model)
    data = RankData(cfg.data, tokenizer, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
    counts = _scan_data(dist, data, cfg, run_dir)
    say(f"data: {counts['train_records']} train and {counts['eval_records']} eval records in {len(data.shards)} "
        f"shard(s), {counts['bad_records']} bad (quarantined), {counts['train_target_tokens']} response tokens/epoch")

    weights_dtype = torch.float32
    if cfg.model.finetune == "lora" and dist.accelerator.mixed_precision == "bf16":
        weights_dtype = torch.bfloat16  # the frozen base needs no fp32 master copy
    model = load_model(checkpoint, cfg.model, weights_dtype)
    total, trainable = count_parameters(model)
    say(f"model: {checkpoint} ({cfg.model.finetune}), {total:,} parameters, {trainable:,} trainable; "
        f"{dist.world_size} process(es) x micro-batch {cfg.train.micro_batch_size} x accumulation {accumulation}")
    optimizer = _build_optimizer(model, cfg)
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
    logger = _loggers(cfg, run_dir, state) if dist.is_main else None

    rows = TrainRows(data, state.position_for(dist.rank))
    pad_id = tokenizer.pad_token_id
    pad_to = cfg.data.max_length if cfg.data.packing else None
    stop = StopRequest().install()
    timed_tokens, timed_seconds, first_loss, last_loss = 0, 0.0, None, None
    try:
        while state.step < cfg.train.max_steps:
            step_start = time.perf_counter()
            taken = rows.take(cfg.train.micro_batch_size * accumulation)
            batches = micro_batches_of(taken, cfg.train.micro_batch_size, pad_id, pad_to)
            stats = train_step(dist, model, optimizer, scheduler, batches, cfg.train.max_grad_norm, stop.requested)
            if stats.stop_requested:
                save_checkpoint(dist, run_dir, _with_positions(dist, state, rows), cfg, cfg.train.keep_checkpoints)
                # Every rank says why it stops: the one that got the signal is the one to look for.
                print(f"rank {dist.rank}: stop requested ({stop.signal_name or 'by another rank'}): "
                      f"checkpointed step {state.step}, exiting with {EXIT_PREEMPTED}", flush=True)
                return EXIT_PREEMPTED
            rows.position = taken[-1].resume
            state.step += 1
            state.tokens_seen += stats.tokens
            state.target_tokens_seen += stats.target_tokens
            elapsed = time.perf_counter() - step_start
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
                metrics = {
                    "loss": stats.loss.item(),  # host sync: logging only
                    "grad_norm": stats.grad_norm.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": stats.tokens / elapsed,
                    "target_tokens_per_s": stats.target_tokens / elapsed,
                    "tokens_seen": state.tokens_seen,
                    "target_tokens_seen": state.target_tokens_seen,
                    "step_time_s": elapsed,
                    "data/epoch": rows.position.epoch,
                    "data/taken": rows.position.taken,
                }
                first_loss = metrics["loss"] if first_loss is None else first_loss
                last_loss = metrics["loss"]
                if logger:
                    logger.log(metrics, state.step)
            if state.step > THROUGHPUT_WARMUP_STEPS:
                timed_tokens, timed_seconds = timed_tokens + stats.tokens, timed_seconds + elapsed
            if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < cfg.train.max_steps:
                _log(logger, evaluate(dist, model, data, cfg, pad_id), state.step)
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 \
                    and state.step < cfg.train.max_steps:
                save_checkpoint(dist, run_dir, _with_positions(dist, state, rows), cfg, cfg.train.keep_checkpoints)

        _log(logger, evaluate(dist, model, data, cfg, pad_id), state.step)
        state.finished = True
        save_checkpoint(dist, run_dir, _with_positions(dist, state, rows), cfg, cfg.train.keep_checkpoints)
        model_dir = run_dir / "model"
        unwrapped = dist.accelerator.unwrap_model(model)
        written = save_final_model(unwrapped, tokenizer, cfg.model, model_dir, dist.accelerator.save) \
            if dist.is_main else []
        dist.barrier()
        summary = {
            "steps": state.step,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "tokens_per_s": round(timed_tokens / timed_seconds, 1) if timed_seconds else None,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "tokens_seen": state.tokens_seen,
            "model_dirs": [str(p) for p in written],
        }
        if dist.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        say("done: " + json.dumps(summary))
        return 0
    finally:
        stop.uninstall()
        if logger:
            logger.close()


def _log(logger: MetricsLogger | None, metrics: dict[str, float], step: int) -> None:
    if logger and metrics:
        logger.log(metrics, step)


def _with_positions(dist: Dist, state: TrainerState, rows: TrainRows) -> TrainerState:
    state.data_positions = dist.gather_objects(rows.position.to_dict())
    return state
