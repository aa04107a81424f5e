"""Before/after table for #29 ("a resumed run must keep learning"): for each resume kind of
tests/test_resume_matrix.py, the mean train loss of the 10 steps after the resume against the uninterrupted
run, and at how many of those steps the weights moved.

    python bench/resume_table.py --code DIR --work DIR [--cases NAME ...]

--code is a Bonsai checkout whose `bonsai` package the training subprocesses run (first on PYTHONPATH, cwd
DIR, so its launch/*.yaml and ds_configs/ are used). The logic is tests/conftest.py's and
tests/test_resume_matrix.py's, without pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

GLOBAL_BATCH = 12
STEPS = 15
WINDOW = 10
LAUNCH_TIMEOUT_S = 900

# (nproc, micro_batch_size, launch file) of each source run; every one has GLOBAL_BATCH rows a step.
SOURCES = {"ddp2": (2, 3, None), "one": (1, 4, None), "zero3": (2, 3, "zero3")}


@dataclass(frozen=True)
class Case:
    source: str
    resume_at: int
    nproc: int
    micro: int
    launch: str | None


# As tests/test_resume_matrix.py's CASES (2to1_even resumes after step 4 there: accumulation 2 -> 4 on an
# even step leaves the micro-step counter on a boundary).
CASES = {
    "2to1_odd": Case("ddp2", 5, 1, 3, None),
    "2to1_even": Case("ddp2", 4, 1, 3, None),
    "2to2": Case("ddp2", 5, 2, 3, None),
    "1to2": Case("one", 5, 2, 3, None),
    "2to3": Case("ddp2", 5, 3, 2, None),
    "micro_batch_changed": Case("one", 5, 1, 2, None),
    "ddp_to_zero2": Case("ddp2", 5, 2, 3, "zero2"),
    "ddp_to_zero3": Case("ddp2", 5, 2, 3, "zero3"),
    "zero3_to_ddp1": Case("zero3", 5, 1, 3, None),
}
DEFAULT_CASES = ["2to1_odd", "2to1_even", "2to2", "1to2", "2to3", "micro_batch_changed", "ddp_to_zero3", "zero3_to_ddp1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(code: Path) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update({"PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"})
    return env


def train_command(code: Path, config: Path, overrides: list[str] = (), nproc: int = 1, launch: str | None = None) -> list[str]:
    if nproc == 1 and launch is None:
        return [sys.executable, "-m", "bonsai.cli", "train", str(config), *overrides]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(code / "launch" / f"{launch or 'ddp'}.yaml"),
        "--num_processes", str(nproc), "--main_process_port", str(free_port()),
        "-m", "bonsai.cli", "train", str(config), *overrides,
    ]  # fmt: skip


def run_train(code: Path, config: Path, overrides: list[str] = (), nproc: int = 1, launch: str | None = None,
              log: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_command(code, config, overrides, nproc, launch), cwd=code, env=subprocess_env(code),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if log is not None:
        log.write_text(f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", encoding="utf-8")
    return proc


def last_error_line(proc: subprocess.CompletedProcess) -> str:
    """Bonsai's own last `bonsai: error` (ranks' lines can run together: the last one), else the last line
    that names an error, else the last line."""
    lines = [l.strip() for l in (proc.stdout + "\n" + proc.stderr).splitlines() if l.strip()]
    bonsai = [l for l in lines if "bonsai: error" in l]
    if bonsai:
        line = "bonsai: error" + bonsai[-1].split("bonsai: error")[-1]
    else:
        err = [l for l in lines if any(w in l for w in ("Error", "error:", "Exception")) and "ChildFailedError" not in l
               and "elastic/errors.html" not in l]
        line = (err or lines or ["(no output)"])[-1]
    return f"exit {proc.returncode}: {line[:300]}"


def check_code_under_test(code: Path) -> None:
    """The subprocesses must import DIR's bonsai (the venv's editable install points elsewhere)."""
    probe = "import bonsai.config, bonsai.cli, bonsai.train.trainer as t; print(bonsai.config.__file__); print(t.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=code, env=subprocess_env(code), capture_output=True,
                         text=True, check=True).stdout.split()
    for f in out:
        assert Path(f).resolve().is_relative_to(code.resolve()), f"bonsai imported from {f}, not {code}"
    print(f"code under test: {code} (bonsai.config and bonsai.train.trainer import from it)")


def refused_keys(code: Path, cfg: dict) -> list[tuple]:
    """The keys the code's own config validation refuses as unknown (extra_forbidden), as key paths."""
    probe = (
        "import json, sys\n"
        "from pydantic import ValidationError\n"
        "from bonsai.config import BonsaiConfig\n"
        "try:\n"
        "    BonsaiConfig.model_validate(json.load(sys.stdin)); print('[]')\n"
        "except ValidationError as e:\n"
        "    print(json.dumps([list(x['loc']) for x in e.errors() if x['type'] == 'extra_forbidden']))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], input=json.dumps(cfg), cwd=code, env=subprocess_env(code),
                         capture_output=True, text=True, check=True).stdout
    return [tuple(loc) for loc in json.loads(out.strip().splitlines()[-1])]


def source_config(code: Path, work: Path, name: str, dropped: set) -> Path:
    nproc, micro, _ = SOURCES[name]
    cfg = {  # tests/conftest.py base_config
        "model": {"name_or_path": "tiny-phi", "cache_dir": str(work / "model-cache")},
        "data": {"path": str(code / "data" / "sample"), "max_length": 256, "packing": True, "eval_fraction": 0.05},
        "train": {"output_dir": str(work / name), "seed": 7, "max_steps": 8, "micro_batch_size": 4,
                  "gradient_accumulation_steps": 1, "lr": 2e-3, "warmup_steps": 2, "precision": "fp32"},
        "distributed": {"timeout_s": 60},
        "logging": {"progress_bar": False},
    }
    # tests/test_resume_matrix.py source_config
    cfg["train"].update(max_steps=STEPS, micro_batch_size=micro, gradient_accumulation_steps=GLOBAL_BATCH // (micro * nproc),
                        weight_decay=0.1, checkpoint_every=1, keep_checkpoints=STEPS + 1)
    cfg["eval"] = {"every_steps": 0, "probes": None}
    cfg["logging"]["wandb"] = {"mode": "disabled"}
    for loc in refused_keys(code, cfg):
        node = cfg
        for k in loc[:-1]:
            node = node[k]
        node.pop(loc[-1], None)
        key = ".".join(map(str, loc))
        if key not in dropped:
            dropped.add(key)
            print(f"note: {key} is refused by {code}'s config validation; dropped for this code")
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def step_losses(run_dir: Path) -> dict[int, float]:
    rows = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "train/loss" in row:
                rows[row["step"]] = row["train/loss"]
    return rows


def weights(checkpoint: Path) -> dict:
    if (checkpoint / "pytorch_model").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="pytorch_model",
                                                        exclude_frozen_parameters=True)
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


def moved_steps(run_dir: Path, resume_at: int) -> tuple[int, list[int]]:
    """(steps of the window whose weights differ from the previous step's checkpoint, missing checkpoints)."""
    ckpt = lambda s: run_dir / "checkpoints" / f"step_{s:08d}"  # noqa: E731
    moved, missing = 0, []
    before = weights(ckpt(resume_at))
    for step in range(resume_at + 1, resume_at + WINDOW + 1):
        if not ckpt(step).is_dir():
            missing.append(step)
            before = None
            continue
        after = weights(ckpt(step))
        if before is not None and max((after[n] - before[n]).abs().max().item() for n in after) > 0:
            moved += 1
        before = after
    return moved, missing


def preempted_copy(source: Path, run_dir: Path, step: int) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir)
    for checkpoint in (run_dir / "checkpoints").glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    (run_dir / "summary.json").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    args = ap.parse_args()
    code, work = args.code.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    check_code_under_test(code)
    dropped: set = set()

    sources: dict[str, tuple[Path, Path] | str] = {}
    for name in dict.fromkeys(CASES[c].source for c in args.cases):
        nproc, _, launch = SOURCES[name]
        config = source_config(code, work, name, dropped)
        finished = work / f"{name}.finished"
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.rmtree(finished, ignore_errors=True)
        print(f"source {name}: {nproc} process(es), launch {launch or 'ddp' if nproc > 1 else 'none'} ...", flush=True)
        proc = run_train(code, config, nproc=nproc, launch=launch, log=work / f"{name}.log")
        if proc.returncode:
            sources[name] = f"source run failed, {last_error_line(proc)}"
            print(f"  {sources[name]}", flush=True)
            continue
        sources[name] = (config, (work / name).rename(finished))

    rows = []
    for name in args.cases:
        case = CASES[name]
        src = sources[case.source]
        lo, hi = case.resume_at + 1, case.resume_at + WINDOW
        if isinstance(src, str):
            rows.append((name, lo, hi, src))
            continue
        config, source = src
        run_dir = source.with_suffix("")
        preempted_copy(source, run_dir, case.resume_at)
        print(f"case {name}: resume after step {case.resume_at} on {case.nproc} process(es), micro {case.micro}, "
              f"launch {case.launch or ('ddp' if case.nproc > 1 else 'none')} ...", flush=True)
        proc = run_train(code, config, [f"train.micro_batch_size={case.micro}"], nproc=case.nproc, launch=case.launch,
                         log=work / f"case-{name}.log")
        kept = work / f"case-{name}"
        shutil.rmtree(kept, ignore_errors=True)
        if proc.returncode:
            rows.append((name, lo, hi, last_error_line(proc)))
            run_dir.rename(kept)
            continue
        window = range(lo, hi + 1)
        got, ref = step_losses(run_dir), step_losses(source)
        missing_rows = [s for s in window if s not in got]
        resumed = statistics.fmean(got[s] for s in window if s in got) if len(missing_rows) < WINDOW else float("nan")
        reference = statistics.fmean(ref[s] for s in window)
        moved, missing = moved_steps(run_dir, case.resume_at)
        moved_text = f"{moved} of {WINDOW}" + (f" (no checkpoint for steps {missing})" if missing else "")
        if missing_rows:
            moved_text += f"; no loss logged for steps {missing_rows}"
        if f"resumed from {run_dir / 'checkpoints' / f'step_{case.resume_at:08d}'}" not in proc.stdout:
            moved_text += "; NOT resumed from the checkpoint (no 'resumed from' line)"
        rows.append((name, lo, hi, resumed, reference, resumed - reference, moved_text))
        run_dir.rename(kept)

    print()
    print(f"code: {code}")
    if dropped:
        print(f"config keys dropped for this code (refused by its validation): {', '.join(sorted(dropped))}")
    print()
    print("| case | steps | resumed mean loss | uninterrupted mean | difference | steps after the resume whose weights moved |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        name, lo, hi = row[:3]
        if len(row) == 4:
            print(f"| {name} | {lo}-{hi} | {row[3].replace('|', '/')} | | | |")
        else:
            _, _, _, resumed, reference, diff, moved_text = row
            print(f"| {name} | {lo}-{hi} | {resumed:.4f} | {reference:.4f} | {diff:+.4f} | {moved_text} |")


if __name__ == "__main__":
    main()
