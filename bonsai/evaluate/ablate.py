"""`bonsai ablate CONFIG --exclude EXCLUDED [--seeds N]`: does leaving the suspects out help?

Trains the config twice per seed, as it is (baseline) and with `data.exclude=EXCLUDED` (cleaned), each
run a plain `bonsai train` in its own run dir (so an interrupted ablation resumes: finished runs are
reused, unfinished ones resume from their checkpoints). Then every final model is measured on the
same records: the held-out split without the excluded records, and the "contested" records (kept
training records that ask what an excluded record asks: the side of a contradiction the cleaned run
keeps). The comparison and its noise band are in bonsai.evaluate.ab_report.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from bonsai.config import BonsaiConfig, ConfigError, config_changes
from bonsai.data.checks import question_of
from bonsai.data.dataset import read_valid_records
from bonsai.data.exclude import read_exclusions
from bonsai.data.records import Record, in_eval_split
from bonsai.data.textmetrics import normalise
from bonsai.evaluate.compare import loss_breakdown
from bonsai.evaluate.generation import average_by_category, generate, generation_rows, load_probes
from bonsai.metric_keys import TRAIN_LOSS
from bonsai.observe.metrics import read_metrics
from bonsai.observe.report import read_events
from bonsai.rundir import RunDir

ARMS = ("baseline", "cleaned")


@dataclass(frozen=True)
class ArmRun:
    arm: str  # "baseline" or "cleaned"
    seed: int
    run_dir: Path

    def overrides(self, exclude: str) -> list[str]:
        cleaned = [f"data.exclude={exclude}"] if self.arm == "cleaned" else []
        return [f"train.output_dir={self.run_dir}", f"train.seed={self.seed}", *cleaned]


@dataclass(frozen=True)
class EvalSets:
    heldout: list[Record]  # what neither arm trained on, the excluded records left out
    leaked: list[Record]  # held out, but an excluded record gives the same answer: left out too
    contested: list[Record]  # trained on by both arms; an excluded record asks the same question
    probes: list[tuple[Record, str | None]]  # (prompt, reference)


def plan_runs(cfg: BonsaiConfig, seeds: int, out: Path, baseline: Path | None = None) -> list[ArmRun]:
    """Both arms per seed, from train.seed up; `baseline`, a finished run of this config, is the first."""
    first = cfg.train.seed
    runs = [ArmRun(arm, first + i, out / f"{arm}-seed{first + i}") for i in range(seeds) for arm in ARMS]
    if baseline is not None:
        runs[0] = ArmRun("baseline", first, baseline)
    return runs


def check_baseline(cfg: BonsaiConfig, baseline: Path) -> None:
    """A run the user already has may stand for the first seed's baseline if it is this config, finished."""
    run = RunDir(baseline)
    if not run.summary.exists() or not run.config.exists():
        raise ConfigError(f"--baseline {baseline}: not a finished Bonsai run (no summary.json and config.yaml)")
    _, refused = config_changes(yaml.safe_load(run.config.read_text(encoding="utf-8")), cfg)
    refused = [line for line in refused if not line.startswith("train.output_dir:")]
    if refused:
        raise ConfigError(f"--baseline {baseline} was trained on another config ({'; '.join(refused[:3])}): "
                          "pass the config and overrides it was trained with")
    steps = finished_steps(baseline)
    if steps != cfg.train.max_steps:
        raise ConfigError(f"--baseline {baseline} trained {steps} steps; the config says train.max_steps="
                          f"{cfg.train.max_steps}")


def check_ablation(cfg: BonsaiConfig, exclude: str, eval_data: str | None) -> frozenset[str]:
    """The excluded ids, once the comparison is known to be meaningful."""
    if cfg.data.exclude:
        raise ConfigError(f"data.exclude is already set ({cfg.data.exclude}): the baseline must train on "
                          f"everything; drop it from the config, or merge it into {exclude}")
    excluded = read_exclusions(exclude)
    if not excluded:
        raise ConfigError(f"--exclude {exclude}: no record ids; nothing to compare")
    if not eval_data and cfg.data.eval_fraction <= 0:
        raise ConfigError("no held-out records: set data.eval_fraction (e.g. 0.05) or pass --eval-data PATH")
    return excluded


def finished_steps(run_dir: Path) -> int | None:
    """The steps a finished run trained (its summary.json), None for a run that has not finished."""
    summary = RunDir(run_dir).summary
    return json.loads(summary.read_text(encoding="utf-8")).get("steps") if summary.exists() else None


def train_arm(run: ArmRun, config: str, overrides: list[str], exclude: str, launch: str | None,
              timeout_s: float | None) -> None:
    """One `bonsai train` (under `launch`, e.g. "accelerate launch --config_file launch/ddp.yaml")."""
    prefix = shlex.split(launch) if launch else [sys.executable]
    command = [*prefix, "-m", "bonsai.cli", "train", config, *overrides, *run.overrides(exclude)]
    print(f"ablate: training {run.arm} (seed {run.seed}) in {run.run_dir}", flush=True)
    try:
        code = subprocess.run(command, timeout=timeout_s, check=False).returncode
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{run.arm} seed {run.seed}: training passed --run-timeout ({timeout_s:.0f} s); "
                           f"run the same command again to resume it") from None
    if code != 0:
        raise RuntimeError(f"{run.arm} seed {run.seed}: `bonsai train` exited {code} (its log is above; "
                           f"run the same command again to resume)")


def eval_sets(cfg: BonsaiConfig, excluded: frozenset[str], eval_data: str | None) -> EvalSets:
    records = read_valid_records(cfg.data.path)
    held = set() if eval_data else {r.id for r in records if in_eval_split(r.id, cfg.data.eval_fraction)}
    candidates = read_valid_records(eval_data) if eval_data else [r for r in records if r.id in held]
    heldout = [r for r in candidates if r.id not in excluded]
    trained = [r for r in records if r.id not in held]  # by the baseline; the cleaned run less the excluded
    removed = [r for r in trained if r.id in excluded]
    asked = {question_of(r) for r in removed}
    contested = [r for r in trained if r.id not in excluded and question_of(r) in asked]
    # A held-out answer that an excluded record gives (a wrong fact is often another question's right
    # answer) was trained on by the baseline alone: the comparison would measure that, not the data.
    given = {normalise(r.output) for r in removed}
    leaked = [r for r in heldout if normalise(r.output) in given]
    heldout = [r for r in heldout if normalise(r.output) not in given]
    probes = [(p.record, p.reference) for p in load_probes(cfg.eval.probes)] if cfg.eval.probes else []
    if not heldout:
        raise ConfigError("no held-out records left once the excluded ones are out: raise data.eval_fraction "
                          "or pass --eval-data PATH")
    return EvalSets(heldout, leaked, contested, probes)


def curve_metrics(run_dir: Path, warmup_steps: int) -> dict[str, float]:
    """How smoothly the training loss fell: the spread of its step-to-step change after warm-up (over
    the logged steps), and how many instability events the detector raised."""
    losses = [row[TRAIN_LOSS] for row in read_metrics(run_dir)
              if row.get("step", 0) > warmup_steps and isinstance(row.get(TRAIN_LOSS), float)]
    changes = [b - a for a, b in zip(losses, losses[1:])]
    spread = statistics.stdev(changes) if len(changes) > 1 else 0.0
    return {"curve/loss_step_change_std": spread, "curve/events": float(len(read_events(run_dir))),
            "curve/final_train_loss": losses[-1] if losses else float("nan")}


def measure(run: ArmRun, sets: EvalSets, cfg: BonsaiConfig, generate_limit: int) -> dict[str, float]:
    """Everything the comparison needs from one finished run."""
    from bonsai.model.loading import load_for_inference

    model, tokenizer = load_for_inference(str(RunDir(run.run_dir).model))
    decode = cfg.eval.decode
    metrics = loss_breakdown(model, tokenizer, sets.heldout, decode.batch_size, prefix="heldout_loss",
                             bits_prefix="heldout_bits_per_byte")
    if sets.contested:
        metrics |= loss_breakdown(model, tokenizer, sets.contested, decode.batch_size, prefix="contested_loss",
                                  bits_prefix="contested_bits_per_byte")
    prompts = [*sets.probes, *((r, r.output) for r in sets.heldout[:generate_limit])]
    records = [record for record, _ in prompts]
    rows = generation_rows(tokenizer, records, generate(model, tokenizer, records, decode), [ref for _, ref in prompts])
    metrics |= {k: v for k, v in average_by_category(rows, "gen").items() if k.count("/") == 1}
    metrics |= curve_metrics(run.run_dir, cfg.train.num_warmup_steps)
    return metrics


@dataclass(frozen=True)
class AblationRequest:
    config: str
    overrides: list[str]
    exclude: str
    seeds: int
    out: Path
    eval_data: str | None = None
    generate_limit: int = 32
    launch: str | None = None
    run_timeout_s: float | None = None
    baseline: Path | None = None  # a finished run of this config: the first seed's baseline


def ablate(cfg: BonsaiConfig, request: AblationRequest) -> dict:
    """Train what is missing, measure every run on the same records, and compare (see module doc)."""
    from bonsai.evaluate.ab_report import compare_arms, write_ab

    excluded = check_ablation(cfg, request.exclude, request.eval_data)
    if request.baseline is not None:
        check_baseline(cfg, request.baseline)
    sets = eval_sets(cfg, excluded, request.eval_data)
    runs = plan_runs(cfg, request.seeds, request.out, request.baseline)
    for run in runs:
        if finished_steps(run.run_dir) == cfg.train.max_steps:
            print(f"ablate: {run.arm} (seed {run.seed}) already finished in {run.run_dir}", flush=True)
        else:
            train_arm(run, request.config, request.overrides, request.exclude, request.launch, request.run_timeout_s)
    measured = {arm: [] for arm in ARMS}
    for run in runs:
        measured[run.arm].append(measure(run, sets, cfg, request.generate_limit))
    summary = {
        "config": request.config, "overrides": request.overrides, "exclude": request.exclude,
        "excluded": len(excluded), "seeds": sorted({run.seed for run in runs}),
        "heldout": len(sets.heldout), "heldout_left_out": [r.id for r in sets.leaked],
        "contested": len(sets.contested), "probes": len(sets.probes),
        "contested_categories": sorted({r.category for r in sets.contested}),
        "runs": [{"arm": run.arm, "seed": run.seed, "run_dir": str(run.run_dir)} for run in runs],
        "comparison": compare_arms(measured),
    }
    write_ab(request.out, summary)
    return summary
