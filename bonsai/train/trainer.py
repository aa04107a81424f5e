"""`bonsai train` as a recipe: setup, fit, finish.

One code path for one or many ranks, full or LoRA, DDP or ZeRO. The loop body is: take rows, compute
gradients (`bonsai.train.step`), let the callbacks judge the step (the monitor may skip it or roll back),
apply the update, log, let the callbacks act (eval, probes, accounting), maybe checkpoint. Everything
cross-cutting lives in `bonsai.train.callbacks`, with its state saved in each checkpoint; rank-awareness
stays behind `Dist`.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from bonsai.train.callbacks import (Callback, Callbacks, CompileCallback, DataLogCallback, EvalCallback, MemoryCallback, MonitorCallback,
                                    ProbeCallback, StepOutcome, ThroughputCallback)
from bonsai.train.resume.checkpoint import (PendingCheckpoint, TrainerState, checkpoint_step, find_checkpoint,
                                            free_space_warning, latest_checkpoint, list_checkpoints,
                                            load_checkpoint, read_trainer_state, save_checkpoint,
                                            verify_checkpoint)
from bonsai.train.lock import RunLock
from bonsai.train.final_model import model_problem, publish_model
from bonsai.train.resume.data_changes import changes_since, start_new_epoch
from bonsai.data.identity import shard_identities
from bonsai.config import TINY_PHI, BonsaiConfig, ConfigError, config_changes, redact, save_resolved
from bonsai.data.dataset import RankData, describe_bad_records
from bonsai.train.distributed import (SETUP_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD, Dist, is_peer_failure,
                                      launcher_world_size, set_cpu_threads, set_malloc_mmap_threshold, setup_distributed)
from bonsai.errors import (CheckpointMismatch, CheckpointWriteError, CollectiveFailure, DataError, RunDirLocked, TrainingUnstable,
                           UpdateNotApplied, report_now)
from bonsai.evaluate.generation import load_probes
from bonsai.observe.metrics import ConsoleLogger, FanOut, JsonlLogger, MetricsLogger, RowFiles
from bonsai.model.attention import describe_attention
from bonsai.model.loss_head import find_loss_head
from bonsai.model.compile import compile_layers
from bonsai.model.loading import (count_parameters, load_model, load_tokenizer, resolve_save_dtype,
                                  save_final_model)
from bonsai.model.source import resolve_checkpoint
from bonsai.observe.monitor import Event, strongest_action
from bonsai.data.packing import Row
from bonsai.train.resume.preemption import StopRequest, preempted_exit_code, write_stopped
from bonsai.train.update_guard import UpdateGuard
from bonsai.train.step import StepStats, compute_gradients, micro_batches_of, train_breakdown
from bonsai.io import write_json, write_jsonl
from bonsai.rundir import RunDir
from bonsai.data.template import use_template
from bonsai.train.model_card import write_model_cards
from bonsai.version import package_version
from bonsai import metric_keys as keys
from bonsai.data.stream import StreamPosition, list_shards, no_records_error
from bonsai.data.elastic import layouts_from_dict, windows_done_after
from bonsai.data.scan_cache import ScanCache, ScanReport, combine_reports, settings_fingerprint
from bonsai.train.optimizer import build_optimizer
from bonsai.train.resume.reshard import SCRATCH_PREFIX, load_resharded, needs_reshard
from bonsai.train.resume.resize import merge_positions, prune_layouts, resume_accumulation
from bonsai.observe.wandb_logger import resolve_mode

CALLBACK_STATE = "callbacks_rank{rank}.json"  # in each checkpoint: every callback's state, per rank


class TrainRows:
    """This rank's training rows; `position` moves only when a step commits them."""

    def __init__(self, data: RankData, start: StreamPosition):
        self._rows: Iterator[Row] = data.rows("train", start=start)
        self.position = start

    def take(self, n: int) -> list[Row]:
        return [next(self._rows) for _ in range(n)]

    def advance(self, rows: list[Row]) -> None:
        """The step that trained `rows` committed: resume after them, and remember which documents of an
        unfinished packing window they held (a resume on another world size must not repeat them)."""
        for row in rows:
            done = windows_done_after(self.position, row.resume, [d.position for d in row.documents])
            self.position = replace(row.resume, window_done=done)


def train(cfg: BonsaiConfig) -> int:
    """Returns the process exit code: 0 done; `preempted_exit_code()` stopped by a signal after checkpointing."""
    started = time.perf_counter()
    accumulation = cfg.check_world_size(launcher_world_size())
    threads = set_cpu_threads(cfg.distributed.threads_per_process)
    set_malloc_mmap_threshold(SETUP_MMAP_THRESHOLD)  # before the model is built: freed weights go back
    dist = setup_distributed(cfg, accumulation)
    trainer = Trainer(cfg, dist, accumulation, started)
    trainer.say(threads)
    try:
        code = trainer.setup()
        set_malloc_mmap_threshold(TRAINING_MMAP_THRESHOLD)
        if code is None:
            code = trainer.fit()
        if code is None:
            code = trainer.finish(started)
    except Exception as err:
        if isinstance(err, (TrainingUnstable, UpdateNotApplied)):
            trainer.record_failure(err)
        explained = trainer.explain_failure(err)
        if explained is err:
            raise
        # Said now, not after the loggers close: the launcher kills this rank as soon as it sees the
        # dead peer, and once close() has restored the default SIGTERM handler that ends it unheard.
        report_now(explained)
        raise explained from err
    finally:
        trainer.close()
    # Only on a clean return, where every rank got here together: tearing the group down while a peer
    # is still inside a collective would hang. Without it, gloo's worker threads outlive the interpreter
    # and a rank can abort at exit ("terminate called without an active exception") after training.
    dist.close()
    return code


class Trainer:
    def __init__(self, cfg: BonsaiConfig, dist: Dist, accumulation: int, started: float = 0.0):
        self.cfg, self.dist, self.accumulation, self.started = cfg, dist, accumulation, started
        self.run = RunDir(cfg.train.output_dir)
        self.run_dir = self.run.root
        self.say = dist.accelerator.print
        self.logger: FanOut | None = None
        self.stop: StopRequest | None = None
        self.lock: RunLock | None = None
        self.guard: UpdateGuard | None = None
        self.state = TrainerState(world_size=dist.world_size, data_positions=[StreamPosition().to_dict()] * dist.world_size)

    # --- setup ------------------------------------------------------------------------------------

    def setup(self) -> int | None:
        """Build data, model, optimizer and callbacks, and resume. Returns an exit code when there is
        nothing to train (the run already finished), else None."""
        cfg, dist = self.cfg, self.dist
        self._take_run_dir()
        with dist.accelerator.main_process_first():
            self.model_source = self.saved.model_source if self._keeps_source() else resolve_checkpoint(cfg)
        # The tokenizer belongs to the run: a tiny model's is trained on the data, and must never be rebuilt
        # from changed data under the checkpoint's weights.
        kept = self.resume_from is not None and self.run.tokenizer.is_dir()
        self.tokenizer = load_tokenizer(str(self.run.tokenizer) if kept else self.model_source, cfg.model)
        use_template(self.tokenizer, cfg.model.template)  # saved with the model as its chat template
        if dist.is_main and not kept:
            self.tokenizer.save_pretrained(self.run.tokenizer)
        self.data = RankData(cfg.data, self.tokenizer, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
        counts = self.data_counts = scan_data(dist, self.data, cfg, self.run)
        self.say(f"data: {counts['train_records']} train and {counts['eval_records']} eval records in "
                 f"{len(self.data.shards)} shard(s), {counts['bad_records']} bad (quarantined), "
                 f"{counts['train_target_tokens']} response tokens/epoch; scanned in {counts['scan_s']:.1f} s "
                 f"({counts['cached_parts']} of {counts['parts']} shard parts from {self.run.scan_cache})")
        unindexed = self.data.unindexed_reason()
        if unindexed:
            self.say(f"data: every rank's stream reads every record: {unindexed}")
        if cfg.data.exclude:
            self.say(describe_exclusions(cfg.data.exclude, self.data.excluded, counts["excluded_found"]))
        self._setup_model()
        self.callbacks = Callbacks(build_callbacks(cfg, dist.strategy.updates_in_backward))
        self.callbacks.setup(self)
        if self.resume_from is not None:
            self._load(self.resume_from)
            self.say(f"resumed from {self.resume_from} at step {self.state.step}")
            if self.data_changes:
                self.state, said = start_new_epoch(self.state, self.data_changes)
                self.say(said)
        self.state.data_shards, self.state.model_source = self.shard_ids, self.model_source
        if self.resized_from is not None:
            self.state, said = merge_positions(self.state, dist.world_size, counts["items"])
            self.say(said)
        self.data.layouts = layouts_from_dict(self.state.data_layouts)
        self.guard.last_applied = self.state.step
        if self.state.finished and self.state.step < cfg.train.max_steps:
            self.state.finished = False  # train.max_steps was raised: go on from the final checkpoint
        if self.state.finished:
            return self._finished_already(self.started)
        if dist.is_main:
            save_resolved(cfg, self.run.config)  # what runs now; each stretch's own is kept beside it
            save_resolved(cfg, self.run.segment_config(self.state.step))
            self.logger = build_loggers(cfg, self.run, self.state, self.say)
        self.rows = TrainRows(self.data, self.state.position_for(dist.rank))
        self.stop = StopRequest.from_env().install()
        return None

    def _take_run_dir(self) -> None:
        """Before any work: the run dir's lock (rank 0 takes it, every rank learns the outcome), and
        whether its checkpoint can be resumed with this many processes."""
        refusal = None
        if self.dist.is_main:
            self.lock = RunLock(self.run_dir)
            try:
                warning = self.lock.acquire()
                if warning:
                    self.say(f"warning: {warning}")
            except (RunDirLocked, ConfigError) as err:
                self.lock, refusal = None, (type(err).__name__, str(err))
        refusal = self.dist.gather_objects(refusal)[0]
        if refusal:
            raise {"RunDirLocked": RunDirLocked, "ConfigError": ConfigError}[refusal[0]](refusal[1])
        self.resume_from = self._verified_checkpoint()
        self.resized_from, self.saved, self.data_changes = None, None, []
        if self.resume_from is not None:
            self.saved = read_trainer_state(self.resume_from)
            self._check_config_changes(self.resume_from)
            self._check_layout(self.resume_from)
        self._check_data()

    def _check_data(self) -> None:
        """Rank 0 reads every shard's identity (recorded in each checkpoint) and, on a resume, what changed
        since the checkpoint; a refusal reaches every rank."""
        found = None
        if self.dist.is_main:
            try:
                changes = changes_since(self.saved, self.resume_from.name, self.cfg) if self.saved else []
                found = (shard_identities(list_shards(self.cfg.data.path)), changes, None)
            except DataError as err:
                found = ({}, [], str(err))
        self.shard_ids, self.data_changes, refusal = self.dist.gather_objects(found)[0]
        if refusal:
            raise DataError(refusal)

    def _keeps_source(self) -> bool:
        """A resumed tiny-phi run loads the model it started from, not one built from today's data."""
        return (self.saved is not None and self.cfg.model.name_or_path == TINY_PHI and bool(self.saved.model_source)
                and (Path(self.saved.model_source) / "config.json").exists())

    def _check_layout(self, checkpoint: Path) -> None:
        """Whether this many processes, under this strategy, can resume `checkpoint`, and the accumulation
        that keeps its global batch."""
        dist, saved = self.dist, self.saved
        accumulation, said = resume_accumulation(saved, checkpoint, self.cfg, dist.world_size, self.accumulation)
        if said:
            self.say(said)
        self.accumulation = dist.accelerator.gradient_accumulation_steps = accumulation
        if saved.world_size != dist.world_size:
            self.resized_from = saved.world_size

    def _check_config_changes(self, checkpoint: Path) -> None:
        """Resuming never lies about its config: allowed changes are announced, others refused."""
        saved = yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8"))
        allowed, refused = config_changes(saved, self.cfg)
        if refused:
            raise ConfigError(
                f"resuming {self.run_dir} with a changed config ({'; '.join(refused)}): these keys cannot change "
                f"on resume (the saved optimizer and schedule, or the data, would contradict them). Run the same "
                f"config, or train into a new train.output_dir")
        if allowed:
            self.say(f"config changed since {checkpoint.name}: {'; '.join(allowed)}")

    def _verified_checkpoint(self) -> Path | None:
        """The newest checkpoint that verifies; a run dir with history is never retrained from scratch."""
        latest, problems = find_checkpoint(self.run_dir)
        for problem in problems:
            self.say(f"warning: checkpoint {problem}; not used")
        if latest is None and problems:
            raise CheckpointMismatch(
                f"{self.run.checkpoints} holds {len(problems)} checkpoint(s) and none is complete ({problems[0]}); "
                f"nothing was loaded or overwritten. Restore a checkpoint, or use a new train.output_dir")
        if latest is None and self.run.metrics.exists() and self.run.metrics.stat().st_size:
            self.say(f"warning: {self.run.metrics} holds rows of an earlier attempt that saved no checkpoint; "
                     f"training starts at step 0 and replaces them")
        return latest

    def _setup_model(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.weights_dtype = torch.float32
        if cfg.model.finetune == "lora" and dist.strategy.precision == "bf16":
            self.weights_dtype = torch.bfloat16  # the frozen base needs no fp32 master copy
        if cfg.train.async_checkpoint and not dist.strategy.saves_in_background:
            raise ConfigError(f"train.async_checkpoint=true: under {dist.strategy.layout().describe()} checkpoints "
                              f"are written in the foreground; launch with launch/fsdp2.yaml, or set it to false")
        set_seed(cfg.train.seed)  # here, so whatever ran before (building a cache, the data scan) cannot matter
        positions = cfg.train.micro_batch_size * cfg.data.max_length
        model = load_model(self.model_source, cfg.model, self.weights_dtype, dist.device.type, dist.is_main,
                           partitioned=dist.strategy.builds_partitioned, batch_positions=positions,
                           row_length=cfg.data.max_length)
        chunk = find_loss_head(model).chunk_tokens if find_loss_head(model) else 0
        self.say(describe_attention(model.config._attn_implementation, chunk, cfg.model.loss_chunk_tokens,
                                    positions * model.config.vocab_size * 4 / 2**20))
        total, trainable = count_parameters(model)
        self.say(f"model: {self.model_source} ({cfg.model.finetune}), {total:,} parameters, {trainable:,} trainable; "
                 f"{dist.world_size} process(es) x micro-batch {cfg.train.micro_batch_size} x accumulation "
                 f"{self.accumulation}; strategy {dist.strategy.layout().describe()}")
        dist.strategy.configure(cfg, self.accumulation)
        # from_pretrained hands the model over in eval mode: without this, training ran without the dropout
        # the checkpoint's config asks for (Phi-2: resid_pdrop 0.1), and evaluation's model.train(was_training)
        # kept it off.
        model.train()
        model = dist.strategy.shard(model)  # FSDP2 shards here: its optimizer holds the shards
        if cfg.train.compile:
            self._compile(model)
        optimizer, summary = build_optimizer(model, cfg)
        self.say(summary)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, cfg.train.num_warmup_steps, cfg.train.max_steps, min_lr_rate=cfg.train.min_lr_ratio)
        self.model, self.optimizer, self.scheduler = dist.strategy.prepare(model, optimizer, scheduler)
        self.guard = UpdateGuard()
        self.pending: PendingCheckpoint | None = None  # a checkpoint still being written in the background

    def _compile(self, model) -> None:
        refusal = self.dist.strategy.compile_refusal()
        if refusal:
            raise ConfigError(f"train.compile=true: {refusal}")
        layers = compile_layers(model, dynamic_length=not self.cfg.data.packing, cache_dir=self.run.compile_cache)
        shapes = "one row shape" if self.cfg.data.packing else "row length dynamic (data.packing=false)"
        self.say(f"compile: {layers} decoder layers, each compiled on its first call ({shapes}); generation "
                 f"stays eager")

    def _load(self, checkpoint: Path) -> None:
        """Model, optimizer, scheduler, RNG and counters from `checkpoint`, and every callback's state."""
        try:
            self.state = self._load_state(checkpoint)
        except CheckpointMismatch:
            raise
        except (OSError, RuntimeError, ValueError) as err:  # sizes verified, contents not: say which one
            raise CheckpointMismatch(f"{checkpoint} verified but could not be loaded ({str(err).splitlines()[0][:200]}); "
                                     f"move it aside to resume from the one before") from err
        saved = [checkpoint / CALLBACK_STATE.format(rank=r) for r in range(read_trainer_state(checkpoint).world_size)]
        states = [json.loads(p.read_text(encoding="utf-8")) if p.exists() else {} for p in saved]
        if len(states) == self.dist.world_size:
            self.callbacks.load_state_dict(states[self.dist.rank])
        else:  # every rank must judge steps alike: none may start with a blind detector
            self.callbacks.load_resized(states, self.dist.rank)

    def _load_state(self, checkpoint: Path) -> TrainerState:
        """Model, optimizer, scheduler and counters: as saved, or resharded when `checkpoint` was written
        under another strategy, or as ZeRO partitions for another number of processes."""
        dist = self.dist
        saved = read_trainer_state(checkpoint)
        if not needs_reshard(saved, dist.world_size, dist.strategy.layout()):
            return load_checkpoint(dist, checkpoint)
        scratch = self.run.root / f"{SCRATCH_PREFIX}{checkpoint.name}"
        state, said = load_resharded(dist, checkpoint, saved, self.model, self.optimizer, self.scheduler, scratch)
        self.say(said)
        return state

    # --- the loop ---------------------------------------------------------------------------------

    def fit(self) -> int | None:
        """Train until max_steps. Returns an exit code when stopped on request, else None."""
        cfg = self.cfg
        while self.state.step < cfg.train.max_steps:
            begun = time.perf_counter()
            taken = self.rows.take(cfg.train.micro_batch_size * self.accumulation)
            batches = micro_batches_of(taken, cfg.train.micro_batch_size, self.tokenizer.pad_token_id,
                                       cfg.data.max_length if cfg.data.packing else None)
            stop_reason = self.stop.reason
            stats = compute_gradients(self.dist, self.model, batches, cfg.train.max_grad_norm, stop_reason is not None)
            if stats.stop_requested:
                return self._stop(stop_reason)
            events = self.callbacks.judge(self.state.step + 1, stats, taken[-1].resume)
            action = self._action(events)
            if action == "stop":
                raise self._diverged(events)
            self.rows.advance(taken)
            if action == "rollback":
                self._rollback(events)
                continue
            self.dist.strategy.step(self.optimizer, self.scheduler, skip=action == "skip")
            self.guard.check(self.state.step + 1, skipped=action == "skip", why_not=self.dist.strategy.describe_update_state)
            self._commit(stats, action)
            outcome = StepOutcome(self.state.step, stats, time.perf_counter() - begun, action, events, taken)
            self.stop.note_step(outcome.elapsed_s)
            self._log_step(outcome)
            self.callbacks.post_step(outcome)
            every = cfg.train.checkpoint_every
            if every and self.state.step % every == 0 and self.state.step < cfg.train.max_steps:
                self._periodic_checkpoint()
        return None

    def _periodic_checkpoint(self) -> None:
        veto = self.callbacks.checkpoint_veto()
        if veto:
            self.say(f"checkpoint step {self.state.step} not written: {veto} (the last healthy one is "
                     f"{self.last_healthy_checkpoint() or 'none'})")
            return
        self.checkpoint(background=self.cfg.train.async_checkpoint)

    def last_healthy_checkpoint(self) -> Path | None:
        """The newest complete checkpoint whose weights a clean step confirmed (with the monitor off: the
        newest complete one)."""
        trusted = self.callbacks.trusted_before()
        found = [c for c in list_checkpoints(self.run_dir) if trusted is None or checkpoint_step(c) < trusted]
        return next((c for c in reversed(found) if verify_checkpoint(c) is None), None)

    def _diverged(self, events: list[Event]) -> TrainingUnstable:
        event = next(e for e in events if e.action == "stop")
        return TrainingUnstable(
            f"step {self.state.step + 1}: the loss {event.value:.4g} is above {event.threshold:.4g} "
            f"(monitor.divergence_ratio x the loss of a uniform guess): training diverged. Last healthy "
            f"checkpoint: {self.last_healthy_checkpoint() or 'none'}. Train again with a lower train.lr or a longer "
            f"warm-up (a new train.output_dir), or set monitor.on_divergence=rollback to go back and skip the data")

    def _action(self, events: list[Event]) -> str | None:
        """The strongest action the events ask for, and what it becomes where it cannot be done."""
        action = strongest_action(events)
        if action in ("rollback", "stop"):
            self.finish_pending()  # the checkpoint being written may be the last healthy one
        if action == "rollback" and self.last_healthy_checkpoint() is None:
            if self.dist.strategy.updates_in_backward:  # the update is applied already: nothing to go back to
                raise TrainingUnstable(f"step {self.state.step + 1}: {events[0].kind} before the first checkpoint; "
                                       f"nothing to roll back to under {self.dist.strategy.layout().describe()}")
            action = "skip"  # nothing to roll back to yet: at least keep this step out of the weights
            for e in events:
                e.action = "skip (no checkpoint yet)" if e.action == "rollback" else e.action
        if self.logger and events:
            self.logger.log_rows("events", [e.to_dict() for e in events], self.state.step + 1)
        return action

    def _commit(self, stats: StepStats, action: str | None) -> None:
        state = self.state
        state.skipped_steps += action == "skip"
        state.step += 1
        state.tokens_seen += stats.tokens
        state.target_tokens_seen += stats.target_tokens

    def _log_step(self, outcome: StepOutcome) -> None:
        """The step's metrics row, on log steps and event steps; collectives inside, on every rank."""
        state, cfg = self.state, self.cfg
        if not (state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps or outcome.events):
            return
        stats = outcome.stats
        outcome.metrics = {
            keys.TRAIN_LOSS: stats.host().loss,  # read once per step, with the monitor's values
            keys.GRAD_NORM: stats.host().grad_norm,
            keys.LEARNING_RATE: self.scheduler.get_last_lr()[0],
            keys.TOKENS_SEEN: state.tokens_seen,
            keys.TARGET_TOKENS_SEEN: state.target_tokens_seen,
            keys.SKIPPED: int(outcome.action == "skip"),
            keys.DATA_EPOCH: self.rows.position.epoch,
            keys.DATA_TAKEN: self.rows.position.taken,
            **train_breakdown(self.dist, stats),
        }
        outcome.metrics.update(self.callbacks.step_metrics(outcome))
        if self.logger:
            self.logger.log(outcome.metrics, state.step)

    def _rollback(self, events: list[Event]) -> None:
        """Reload the latest checkpoint and go on with the data after this step (PaLM's recipe)."""
        state, cfg = self.state, self.cfg
        if state.rollbacks >= cfg.monitor.max_rollbacks:
            raise TrainingUnstable(
                f"step {state.step + 1}: {events[0].kind} after {state.rollbacks} rollback(s) "
                f"(monitor.max_rollbacks); see {self.run.events} for the records involved")
        self.dist.strategy.step(self.optimizer, self.scheduler, skip=True)
        target = self.last_healthy_checkpoint()
        rollbacks = state.rollbacks + 1
        # The callbacks keep what they learned (the detector keeps the spike out of its baseline).
        self.state = self._load_state(target)
        self.state.rollbacks = rollbacks
        self.callbacks.on_rollback(self.state.step)
        self.guard.forget(self.state.step)  # under DeepSpeed the engine stepped inside backward: gone now
        # The data goes on from here, under this world's layout (the target may predate a resize).
        self.state.world_size, self.state.data_layouts = state.world_size, state.data_layouts
        self.say(f"rolled back to {target.name} (rollback {rollbacks} of at most {cfg.monitor.max_rollbacks}); "
                 f"data continues after step's rows")
        if self.logger:
            self.logger.rewind(self.state.step)

    def _stop(self, reason: str | None) -> int:
        """Every rank agreed to stop: checkpoint, say who asked and why, and exit."""
        dist = self.dist
        self.finish_pending()
        veto = self.callbacks.checkpoint_veto()
        saved = self.last_healthy_checkpoint() if veto else self.checkpoint()
        if veto:
            self.say(f"not checkpointed: {veto}; a resume starts from {saved or 'the beginning'}")
        asked = [f"rank {r}: {why}" for r, why in enumerate(dist.gather_objects(reason)) if why]
        if dist.is_main:
            write_stopped(self.run_dir, self.state.step, saved, "; ".join(asked))
        dist.barrier()  # a rank that exits early can make srun kill rank 0 before it wrote that
        # Every rank says why it stops: the one that got the signal is the one to look for.
        code = preempted_exit_code(reason)
        print(f"rank {dist.rank}: stop requested ({reason or 'by another rank'}): checkpointed step "
              f"{self.state.step}, exiting with {code} (resume: run the same command again)", flush=True)
        return code

    def checkpoint(self, background: bool = False) -> Path | None:
        """A collective: every rank's data position, its callbacks' state, and the strategy's state.
        `background`: the strategy's files are written by a thread while training goes on (None is
        returned; the checkpoint is published by `finish_pending`)."""
        self.finish_pending()
        begun = time.perf_counter()
        dist = self.dist
        state = self.state
        state.data_positions = dist.gather_objects(self.rows.position.to_dict())
        state.data_layouts = prune_layouts(state.data_layouts, state.data_positions)
        state.global_batch = self.cfg.train.micro_batch_size * self.accumulation * dist.world_size
        state.layout, state.zero_stage, state.offload = dist.strategy.layout().to_dict(), None, None

        estimate = self._checkpoint_estimate()
        if dist.is_main and (warning := free_space_warning(self.run_dir, estimate)):
            self.say(f"warning: {warning}")

        def write_rank_files(directory: Path) -> None:
            self.callbacks.on_checkpoint(directory)
            write_json(directory / CALLBACK_STATE.format(rank=dist.rank), self.callbacks.state_dict())

        saved = save_checkpoint(dist, self.run_dir, self.state, self.cfg, self.cfg.train.keep_checkpoints,
                                write_rank_files, trusted_before=self.callbacks.trusted_before(), estimate=estimate,
                                background=background)
        seconds = time.perf_counter() - begun
        if isinstance(saved, PendingCheckpoint):
            self.pending, self.pending_begun = saved, begun
            self.say(f"checkpoint step_{saved.step:08d} handed to a background write after {seconds:.1f} s")
            return None
        self.stop.note_checkpoint(seconds)
        # The SLURM grace period must cover one step plus one checkpoint: say what a checkpoint costs.
        self.say(f"checkpoint {saved.name} written in {seconds:.1f} s")
        return saved

    def finish_pending(self) -> None:
        """A collective: wait for a background checkpoint's write and make it visible."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        saved = pending.finish()
        self.say(f"checkpoint {saved.name} written in the background (published {time.perf_counter() - self.pending_begun:.1f} s "
                 f"after it began)")

    def _checkpoint_estimate(self) -> int:
        """What a checkpoint takes, for the free-space checks before the first one exists: the weights and
        the optimizer's state (with ZeRO's fp32 master partitions) over every rank that writes them. A
        collective under a sharded strategy."""
        dist = self.dist
        local = dist.strategy.state_bytes(self.model, self.optimizer, dist.world_size)
        per_rank = local[keys.PARAMS_BYTES] + local[keys.OPTIMIZER_BYTES] + local[keys.MASTER_WEIGHTS_BYTES]

        def sum_ranks(value: float) -> float:
            return float(dist.sum(torch.tensor([value], dtype=torch.float64, device=dist.device)).item())

        return dist.strategy.checkpoint_bytes(per_rank, sum_ranks)

    # --- the end ----------------------------------------------------------------------------------

    def finish(self, started: float) -> int:
        """Final eval and probes, the final checkpoint, the model and summary.json."""
        self.finish_pending()
        veto = self.callbacks.checkpoint_veto()
        if veto:
            raise TrainingUnstable(f"the run reached step {self.state.step} with {veto}: no final checkpoint or "
                                   f"model written. Last healthy checkpoint: {self.last_healthy_checkpoint() or 'none'}")
        self.callbacks.on_fit_end(self.state.step)
        self.state.finished = True
        final = self.checkpoint()
        return self._write_model(started, final)

    def _model_dirs(self) -> list[Path]:
        model = self.cfg.model
        merged = model.finetune == "lora" and model.merge_lora_on_save
        return [self.run.model] + ([self.run.model.with_name(f"{self.run.model.name}-merged")] if merged else [])

    def _write_model(self, started: float, final: Path | None) -> int:
        """The model dirs from the weights in memory (a collective under ZeRO-3), then summary.json."""
        dist, state = self.dist, self.state
        unwrapped = dist.strategy.unwrap(self.model)
        # A collective under a sharded strategy. LoRA: only the adapters (never a gathered copy of the base).
        state_dict = dist.strategy.full_state_dict(self.model, trainable_only=self.cfg.model.finetune == "lora")
        save_dtype = resolve_save_dtype(self.cfg.train.save_dtype, dist.strategy.precision)
        summary = {"steps": state.step, "wall_time_s": round(time.perf_counter() - started, 2),
                   **self.callbacks.summary(), "tokens_seen": state.tokens_seen,
                   "skipped_steps": state.skipped_steps, "rollbacks": state.rollbacks, "healthy": True,
                   "health": describe_health(state), "model_dirs": [str(p) for p in self._model_dirs()]}

        def write(tmp: Path) -> list[Path]:
            written = save_final_model(unwrapped, self.tokenizer, self.cfg.model, tmp, state_dict,
                                       self.model_source, save_dtype)
            write_model_cards(written, self.cfg, self._card_facts(summary, save_dtype))
            return written

        failure = None
        if dist.is_main:
            estimate = sum(t.numel() * (save_dtype.itemsize if t.is_floating_point() else t.element_size())
                           for t in state_dict.values())
            try:
                publish_model(self.run.model, write, estimate, final)
                write_json(self.run.summary, summary)
            except CheckpointWriteError as err:
                failure = str(err)
        failure = dist.gather_objects(failure)[0]
        if failure:
            raise CheckpointWriteError(failure)
        self.say("done: " + json.dumps(summary))
        return 0

    def _finished_already(self, started: float) -> int:
        """A rerun of a finished run: nothing to do, unless model/ was never written whole (a full disk, a
        crash in the final save); then it is written again from the final checkpoint just loaded."""
        problem = model_problem(self._model_dirs()) if self.dist.is_main else None
        problem = self.dist.gather_objects(problem)[0]
        if problem is None:
            self.say(f"{self.run_dir} already finished {self.state.step} steps; nothing to do "
                     f"(use a new output_dir to train again)")
            return 0
        self.say(f"{self.run_dir} finished {self.state.step} steps but its model is not whole ({problem}): "
                 f"writing it again from {self.resume_from.name}")
        return self._write_model(started, self.resume_from)

    def _card_facts(self, summary: dict, save_dtype: torch.dtype) -> dict:
        eval_cb, mixed = self.callbacks.find("eval"), self.dist.strategy.precision
        return {"version": package_version(), "world_size": self.dist.world_size, "global_batch": self.state.global_batch,
                "strategy": self.dist.strategy.layout().describe(), "precision": "fp32" if mixed == "no" else mixed,
                "save_dtype": str(save_dtype).removeprefix("torch."),
                "counts": self.data_counts, "summary": summary, "eval": eval_cb.last if eval_cb else {}}

    def record_failure(self, err: Exception) -> None:
        """summary.json of a run that went wrong says so (a finished run's says healthy)."""
        if self.dist.is_main:
            write_json(self.run.summary, {"steps": self.state.step, "healthy": False, "health": str(err),
                                          "skipped_steps": self.state.skipped_steps, "rollbacks": self.state.rollbacks,
                                          "last_healthy_checkpoint": str(self.last_healthy_checkpoint() or "")})

    def explain_failure(self, err: Exception) -> Exception:
        """A failed collective names the step, the likely cause and the checkpoint to resume from."""
        if self.dist.world_size > 1 and is_peer_failure(err):
            return CollectiveFailure(
                f"rank {self.dist.rank}: a collective failed at step {self.state.step + 1} "
                f"({str(err).splitlines()[0][:200]}). Another rank has probably died or hung: its log says why. "
                f"Last complete checkpoint: {latest_checkpoint(self.run_dir) or 'none'}; running the same "
                f"command again resumes from it.")
        return err

    def close(self) -> None:
        # Loggers first (W&B's finish can take seconds), the signal handler last: a launcher's SIGTERM
        # arriving meanwhile then only sets the flag, and an error still reaches the user.
        if self.logger:
            self.logger.close()
        if self.stop:
            self.stop.uninstall()
        if self.guard:
            self.guard.close()
        if self.lock:
            self.lock.release()


# --- building blocks ------------------------------------------------------------------------------

def describe_health(state: TrainerState) -> str:
    """What the summary says of a run that ended healthy: whether it needed the monitor to get there."""
    if not (state.skipped_steps or state.rollbacks):
        return "healthy: every update applied"
    return (f"healthy at the end: {state.skipped_steps} update(s) skipped and {state.rollbacks} rollback(s) "
            f"on the way (events.jsonl)")


def build_callbacks(cfg: BonsaiConfig, updates_in_backward: bool) -> list[Callback]:
    callbacks: list[Callback] = [ThroughputCallback(), MemoryCallback(), DataLogCallback()]
    if cfg.monitor.enabled:
        callbacks.insert(0, MonitorCallback(cfg.monitor.for_strategy(updates_in_backward)))
    callbacks.append(EvalCallback())
    if cfg.eval.probes:
        callbacks.append(ProbeCallback(load_probes(cfg.eval.probes)))
    if cfg.train.compile:
        callbacks.append(CompileCallback())  # last: graphs built by evaluation count at their step
    return callbacks


def scan_data(dist: Dist, data: RankData, cfg: BonsaiConfig, run: RunDir) -> dict[str, float]:
    """Check this rank's share once before training; fail (or quarantine) with every rank's findings.
    Shards unchanged since an earlier launch into this run dir are not read again (bonsai.data.scan_cache)."""
    begun = time.perf_counter()
    fingerprint = settings_fingerprint(data.tokenizer, cfg.data, data.excluded)
    cache = ScanCache(run.scan_cache, fingerprint, dist.rank, dist.world_size)
    scanned = dist.gather_objects((data.scan(cache).to_dict(), cache.hits, cache.misses))
    whole, bases = combine_reports([ScanReport.from_dict(d) for d, _, _ in scanned])
    data.load_indexes(cache, bases)  # after the gather: every rank has written the indexes of what it scanned
    bad_rows = [b.as_quarantine_row() for b in whole.bad]
    bad_text = [str(b) for b in whole.bad]
    counts = {
        "train_records": whole.train_records,
        "eval_records": whole.eval_records,
        "train_target_tokens": whole.train_target_tokens,
        "bad_records": len(bad_rows),
        "cached_parts": sum(hits for _, hits, _ in scanned),
        "parts": sum(hits + misses for _, hits, misses in scanned),
        "scan_s": time.perf_counter() - begun,
        "excluded_found": sorted(set(whole.excluded)),
        "train_by_group": dict(whole.train_by_group),
        "items": whole.items,  # excluded records hold their place in the stream like any other
    }
    if counts["items"] == 0:
        raise no_records_error(data.shards, 0, dist.rank, dist.world_size)
    if bad_rows and cfg.data.on_bad_record == "error":
        raise DataError(
            f"data.path {cfg.data.path}: {describe_bad_records(bad_text)}\n"
            "Fix these records, or set data.on_bad_record=skip to train without them (they are then listed "
            f"in {run.quarantine})."
        )
    if dist.is_main and bad_rows:
        write_jsonl(run.quarantine, bad_rows)  # path, line, field, reason, raw record
    if counts["train_records"] == 0:
        raise DataError(f"data.path {cfg.data.path}: no training records left (eval split and skips took all)")
    return counts


def describe_exclusions(path: str, listed: frozenset[str], found: list[str]) -> str:
    """What data.exclude took out; ids it lists that the data does not hold are named (a list made for
    other data, or a typo), not an error: leaving them out is what was asked."""
    line = f"data.exclude {path}: {len(found)} of {len(listed)} listed record(s) left out of training and eval"
    absent = sorted(listed - set(found))
    if absent:
        line += f"; warning: {len(absent)} listed id(s) are not in the data (e.g. {', '.join(absent[:3])})"
    return line


def build_loggers(cfg: BonsaiConfig, run: RunDir, state: TrainerState, say) -> FanOut:
    loggers: list[MetricsLogger] = [
        JsonlLogger(run.metrics, resume_step=state.step),
        RowFiles(run.root),
        ConsoleLogger(cfg.train.max_steps, state.step, enabled=cfg.logging.progress_bar),
    ]
    if resolve_mode(cfg.logging.wandb) != "disabled":
        from bonsai.observe.wandb_logger import WandbLogger

        loggers.append(WandbLogger(cfg.logging.wandb, run.root, redact(cfg.model_dump(mode="json")), say))
    return FanOut(loggers)
