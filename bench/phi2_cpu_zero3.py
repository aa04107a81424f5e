"""Phi-2 at its real size on this CPU: LoRA under ZeRO-3 over 2 processes trains, checkpoints, resumes
exactly, exports and merges.

    .venv/bin/python bench/phi2_cpu_zero3.py [--work DIR] [--steps 3] [--length 128]

The model is random-init with Phi-2's exact configuration (hidden 2560, 32 layers, 32 heads, intermediate
10240, partial rotary 0.4, vocabulary 51,200; 2.78 B parameters), fp32 (bf16 is 6-16x slower on this
CPU), saved in 2 GB safetensors shards as on the hub, and trained through the shipped launch file
`launch/zero3.yaml` and `configs/phi2_lora.yaml` with only the model path, row length, batch and steps
changed, and DeepSpeed's live-parameter limit lowered to 2e8 (see `cpu_launch_file`). Figures: per-rank peak RSS (sampled every 0.5 s) against the prediction printed first, seconds
per step, seconds per checkpoint (Bonsai's own log line), the resumed step's loss against the
uninterrupted one, and the export's and merge's time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from common import step_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHI2 = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
            num_attention_heads=32, max_position_embeddings=2048, partial_rotary_factor=0.4, layer_norm_eps=1e-5,
            resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)


def build_base(work: Path) -> tuple[Path, int]:
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    from bonsai.config import TinyPhiConfig
    from bonsai.model.source import tiny_phi_for

    base = work / "phi2-random"
    if (base / "config.json").exists():
        return base, sum(p.stat().st_size for p in base.glob("*.safetensors"))
    tokenizer_from = tiny_phi_for(str(ROOT / "data" / "sample"), TinyPhiConfig(), work / "cache", seed=0)
    torch.manual_seed(0)
    model = PhiForCausalLM(PhiConfig(**PHI2, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(base, safe_serialization=True, max_shard_size="2GB")
    del model
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / name, base / name)
    return base, sum(p.stat().st_size for p in base.glob("*.safetensors"))


class PeakRss:
    """Samples the resident memory of every process under `root` twice a second; the peak per rank."""

    def __init__(self, root: psutil.Process):
        self.root, self.peaks, self._done = root, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            for proc in [self.root, *self._children()]:
                try:
                    rank = proc.environ().get("RANK", "launcher" if proc.pid == self.root.pid else "other")
                    self.peaks[rank] = max(self.peaks.get(rank, 0), proc.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self._done.wait(0.5)

    def _children(self):
        try:
            return self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        return {rank: round(rss / 2**30, 2) for rank, rss in sorted(self.peaks.items())}


def run(command: list[str], log: Path) -> tuple[float, dict, str]:
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "WANDB_MODE": "disabled"})
        sampler = PeakRss(psutil.Process(proc.pid))
        code = proc.wait(timeout=5400)
    peaks, text = sampler.stop(), log.read_text()
    if code:
        raise SystemExit(f"{' '.join(command[-4:])} exited {code}; see {log}:\n{text[-3000:]}")
    return time.perf_counter() - started, peaks, text


def cpu_launch_file(work: Path) -> Path:
    """launch/zero3.yaml and its ds_configs/zero3.json, with one change this machine forces: at most 2e8
    gathered parameters live per rank (DeepSpeed's default, 1e9, is 4 GB per rank in fp32; two ranks of
    Phi-2 then exceed 24 GiB). Everything else as shipped."""
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"].update(stage3_max_live_parameters=int(2e8), stage3_prefetch_bucket_size=int(5e7))
    (work / "zero3_cpu.json").write_text(json.dumps(ds, indent=2))
    launch = yaml.safe_load((ROOT / "launch" / "zero3.yaml").read_text())
    launch["deepspeed_config"]["deepspeed_config_file"] = str(work / "zero3_cpu.json")
    (work / "zero3_cpu.yaml").write_text(yaml.safe_dump(launch))
    return work / "zero3_cpu.yaml"


def train(config: Path, log: Path) -> tuple[float, dict, str]:
    port = str(20000 + int(time.time()) % 20000)
    return run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cpu_launch_file(config.parent)),
                "--num_processes", "2", "--main_process_port", port, "-m", "bonsai.cli", "train", str(config)], log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where the 11 GB base and the run go (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bonsai-phi2-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    base, base_bytes = build_base(work)
    params = base_bytes / 4
    print(f"base: {params / 1e9:.2f} B parameters, {base_bytes / 2**30:.1f} GiB fp32 in "
          f"{len(list(base.glob('*.safetensors')))} shards, built in {time.perf_counter() - started:.0f} s", flush=True)
    # Each rank holds its half of the frozen fp32 base, one gathered layer (plus prefetch) at a time, the
    # embedding and head when they run, the adapters and their Adam state, and ~0.6 GiB of runtime.
    predicted = base_bytes / 2 / 2**30 + 2 * 4 * 2560 * 51200 / 2**30 + 0.6
    print(f"predicted peak per rank: {predicted:.1f} GiB", flush=True)

    cfg = yaml.safe_load((ROOT / "configs" / "phi2_lora.yaml").read_text())
    run_dir = work / "run"
    cfg["model"].update(name_or_path=str(base))
    cfg["data"].update(path=str(ROOT / "data" / "sample"), max_length=args.length)
    cfg["train"].update(output_dir=str(run_dir), max_steps=args.steps, checkpoint_every=args.steps - 1,
                        keep_checkpoints=3, micro_batch_size=1, log_every=1, warmup_steps=1)
    cfg["train"].pop("warmup_ratio", None)
    cfg["train"].pop("global_batch_size", None)
    cfg["train"]["gradient_accumulation_steps"] = 1
    cfg["eval"] = {"every_steps": 0, "probes": None}
    config = work / "phi2_lora_cpu.yaml"
    config.write_text(yaml.safe_dump(cfg))

    wall, peaks, text = train(config, work / "train.log")
    rows = step_rows(run_dir)
    per_step = (rows[args.steps]["time"] - rows[1]["time"]) / (args.steps - 1) if args.steps > 1 else float("nan")
    checkpoints = [line for line in text.splitlines() if " written in " in line]
    reference = {step: row["train/loss"] for step, row in rows.items()}
    print(f"train {args.steps} steps: {wall:.0f} s wall, {per_step:.1f} s/step, peak RSS per rank {peaks} GiB; "
          f"{'; '.join(checkpoints)}", flush=True)

    # Resume: drop the final checkpoint and model, train the last step again from step N-1.
    last = run_dir / "checkpoints" / f"step_{args.steps:08d}"
    shutil.rmtree(last)
    for name in ("model", "model-merged"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / "summary.json").unlink()
    wall, resumed_peaks, _ = train(config, work / "resume.log")
    resumed = {step: row["train/loss"] for step, row in step_rows(run_dir).items()}
    exact = resumed[args.steps] == reference[args.steps]
    print(f"resume from step {args.steps - 1}: {wall:.0f} s wall, step {args.steps} loss {resumed[args.steps]!r} "
          f"vs uninterrupted {reference[args.steps]!r} ({'bit-exact' if exact else 'DIFFERENT'}), "
          f"peak RSS per rank {resumed_peaks} GiB", flush=True)

    wall, export_peaks, _ = run([sys.executable, "-m", "bonsai.cli", "export", str(last), "--out",
                                 str(work / "exported")], work / "export.log")
    merged = sorted(p.name for p in (work / "exported-merged").glob("*.safetensors"))
    print(f"export + merge of {last.name}: {wall:.0f} s, peak RSS {export_peaks} GiB, merged shards {merged}",
          flush=True)
    summary = {"parameters_b": round(params / 1e9, 2), "predicted_peak_gib": round(predicted, 1),
               "train_peak_gib": peaks, "seconds_per_step": round(per_step, 1), "checkpoints": checkpoints,
               "resume_bit_exact": exact, "export_peak_gib": export_peaks}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
