"""Seconds from `bonsai train` to its first step, through the command users run: a fresh start (the
start-up scan reads every shard), and a resume at 90 % of the epoch (scan cached per shard; the data
stream seeks to the position's shuffle window, or, "before", reads and skips up to it). Also the bytes
of data each rank's stream reads over one epoch, and each rank's start-up scan on a first launch,
against data / ranks (`--before CHECKOUT`: the scan's bytes under an earlier commit's code too).

    .venv/bin/python bench/first_step.py        # --records 1000000 --procs 1 2 4 --layouts 8 1

The records are the shipped sample repeated with new ids (bench/data_pipeline.py), as 8 shards or as
one file; the demo's tiny Phi. The resume at 90 % is made by writing every rank's position at 90 % of
its share of the epoch into the first launch's checkpoint (trainer_state.json, its size updated in
checkpoint.json): what a run that trained there would have saved, without training 0.9 epochs of 1M
records on this machine first. "Before" is the same checkpoint with the positions' seek hints removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, free_port
from data_pipeline import write_dataset

from bonsai.config import DataConfig
from bonsai.data.stream import StreamPosition, list_shards, rank_items
from bonsai.train.resume.checkpoint import MANIFEST, STATE_FILE, latest_checkpoint


def launch(cfg: dict, work: Path, procs: int) -> subprocess.Popen:
    config = work / "bench.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    launcher = [] if procs == 1 else ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / "ddp.yaml"),
                                      "--num_processes", str(procs), "--main_process_port", str(free_port())]
    return subprocess.Popen([sys.executable, *launcher, "-m", "bonsai.cli", "train", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ | {"WANDB_MODE": "disabled"})


def seconds_to_step(cfg: dict, work: Path, procs: int, step: int, finish: bool, timeout_s: float = 3600) -> float:
    """Launch and wait until metrics.jsonl has a row for `step`; then let the run finish, or stop it."""
    metrics = Path(cfg["train"]["output_dir"]) / "metrics.jsonl"
    begun = time.perf_counter()
    proc = launch(cfg, work, procs)
    try:
        while time.perf_counter() - begun < timeout_s:
            if step in logged_steps(metrics):
                seconds = time.perf_counter() - begun
                if finish and proc.wait(timeout=timeout_s):
                    raise RuntimeError(f"bonsai train exited {proc.returncode}")
                return seconds
            if proc.poll() is not None:
                raise RuntimeError(f"bonsai train exited {proc.returncode} before step {step}")
            time.sleep(0.05)
        raise TimeoutError(f"no step {step} after {timeout_s} s")
    finally:
        kill_tree(proc)


def kill_tree(proc: subprocess.Popen) -> None:
    """The launcher and its ranks: torch's launcher starts each rank in a session of its own."""
    import psutil

    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    proc.wait()


def logged_steps(metrics: Path) -> set[int]:
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.exists() else []
    return {json.loads(line)["step"] for line in lines if line.endswith("}") and "train/loss" in line}


def positions_at(shards: list[str], seed: int, window: int, procs: int, fraction: float) -> list[dict]:
    """Every rank's position after `fraction` of its share of epoch 0."""
    positions = []
    for rank in range(procs):
        taken = [p for p, _, _ in rank_items(shards, seed=seed, window=window, rank=rank, world_size=procs,
                                             start=StreamPosition(), epochs=1)]
        positions.append(taken[int(fraction * len(taken))].to_dict())
    return positions


def resume_from(run_dir: Path, positions: list[dict], seek: bool) -> None:
    """The last checkpoint's positions set to `positions` (without seek hints unless `seek`), and the
    metrics of a previous resume dropped, so its step 2 is not taken for this one's."""
    checkpoint = latest_checkpoint(run_dir)
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    state.update(data_positions=[p if seek else dict(p, seek=None) for p in positions], finished=False)
    (checkpoint / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    manifest = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][STATE_FILE] = (checkpoint / STATE_FILE).stat().st_size
    (checkpoint / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    metrics = run_dir / "metrics.jsonl"
    kept = [line for line in metrics.read_text(encoding="utf-8").splitlines() if json.loads(line).get("step", 0) <= state["step"]]
    metrics.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def stream_epoch(shards: list[str], seed: int, window: int, procs: int, indexed: bool) -> tuple[int, float]:
    """Bytes rank 0's stream reads over one epoch (the kernel's rchar for a child that does only that)
    and its seconds, reading every line (before) or, with the shards' line indexes the scan cache
    holds, its own records (after)."""
    code = ("import sys; sys.path[:0] = [%r]\n"
            "from bonsai.data.stream import StreamPosition, index_shard, rank_items\n"
            "indexes = {url: index_shard(url) for url in %r} if %r else None\n"
            "import time; rchar = lambda: int(open('/proc/self/io').read().split('rchar: ')[1].split()[0])\n"
            "before, begun = rchar(), time.perf_counter()\n"
            "for _ in rank_items(%r, seed=%d, window=%d, rank=0, world_size=%d, start=StreamPosition(), epochs=1,\n"
            "                    indexes=indexes): pass\n"
            "print(rchar() - before, time.perf_counter() - begun)\n") % (str(ROOT), shards, indexed, shards, seed, window, procs)
    read, seconds = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(read), float(seconds)


def scan_bytes(root: Path, data_dir: Path, work: Path, procs: int) -> float:
    """The most bytes any rank's start-up scan reads (no cache: a first launch), over data / ranks; the
    scan of the code at `root` (this checkout, or another one for a before/after)."""
    code = ("import sys; sys.path[:0] = [%r]\n"
            "from bonsai.config import DataConfig, ModelConfig, TinyPhiConfig\n"
            "from bonsai.data.dataset import RankData\n"
            "from bonsai.model.loading import load_tokenizer\n"
            "from bonsai.model.source import tiny_phi_for\n"
            "tiny = str(tiny_phi_for(%r, TinyPhiConfig(), %r, seed=42))\n"
            "data = RankData(DataConfig(path=%r, max_length=512, eval_fraction=0.001),\n"
            "                load_tokenizer(tiny, ModelConfig(name_or_path=tiny)), seed=0, rank=%d, world_size=%d)\n"
            "rchar = lambda: int(open('/proc/self/io').read().split('rchar: ')[1].split()[0])\n"
            "before = rchar(); data.scan(); print(rchar() - before)\n")
    read = [int(subprocess.run([sys.executable, "-c", code % (str(root), str(ROOT / "data" / "sample"), str(work / "cache"),
                                                                str(data_dir), rank, procs)],
                               cwd=root, capture_output=True, text=True, check=True).stdout.split()[-1])
            for rank in range(procs)]
    return max(read) / (sum(p.stat().st_size for p in data_dir.iterdir()) / procs)


def bench(data_dir: Path, work: Path, procs: int, warm_up: bool = False) -> dict[str, float]:
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["model"]["cache_dir"] = str(work / "cache")
    cfg["data"].update(path=str(data_dir), eval_fraction=0.001)  # the final eval is not what is measured
    cfg["train"].update(output_dir=str(work / "run"), max_steps=1, checkpoint_every=0, warmup_steps=0)
    cfg["eval"] = {"every_steps": 0, "probes": None}
    cfg["logging"] = {"progress_bar": False, "wandb": {"mode": "disabled"}}
    shutil.rmtree(work / "run", ignore_errors=True)
    figures = {"fresh": seconds_to_step(cfg, work, procs, 1, finish=True)}
    if warm_up:
        return figures
    shards = list_shards(str(data_dir))
    window = cfg["data"].get("shuffle_window", DataConfig(path=".").shuffle_window)
    positions = positions_at(shards, cfg["train"]["seed"], window, procs, 0.9)
    cfg["train"]["max_steps"] = 1000  # stopped after its first step: never reaches a checkpoint of its own
    for name, seek in (("resume 90% before", False), ("resume 90% after", True)):
        resume_from(work / "run", positions, seek)
        figures[name] = seconds_to_step(cfg, work, procs, 2, finish=False)
    data_bytes = sum(Path(s).stat().st_size for s in shards)
    for name, indexed in (("before", False), ("after", True)):
        read, seconds = stream_epoch(shards, cfg["train"]["seed"], window, procs, indexed)
        figures[f"bytes per rank / (data / ranks) {name}"] = read / (data_bytes / procs)
        figures[f"stream s/epoch {name}"] = seconds
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--layouts", type=int, nargs="+", default=[8, 1], help="shard counts to write the data as")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit: its start-up scan's bytes too")
    parser.add_argument("--scan-only", action="store_true", help="only the start-up scan's bytes per rank")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bonsai-first-step-"))
    print(f"{args.records:,} records; seconds from launch to the first step (fresh) and to the first step "
          f"after a resume at 90 % of the epoch; bytes rank 0's stream reads per epoch over data / ranks, and its seconds")
    for shards in args.layouts:
        data_dir = write_dataset(work / f"data-{shards}", args.records, shards)
        if not args.scan_only:
            bench(data_dir, work, 1, warm_up=True)  # builds the tiny model and tokenizer for this data, untimed
        for procs in args.procs:
            figures = {} if args.scan_only else bench(data_dir, work, procs)
            for name, root in (("before", args.before), ("after", ROOT)):
                if root is not None:
                    figures[f"scan bytes per rank / (data / ranks) {name}"] = scan_bytes(root, data_dir, work, procs)
            print(f"{shards} shard(s), {procs} process(es): " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()),
                  flush=True)
        shutil.rmtree(data_dir)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
