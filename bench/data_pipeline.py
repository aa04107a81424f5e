"""Data pipeline speed: stream (read shards, split per rank, shuffle) + template + tokenize + pack, on
one rank, against the rate the model consumes tokens.

    .venv/bin/python bench/data_pipeline.py              # --records 50000 --max-length 2048 --runs 3

The records are the shipped sample, repeated with new ids into 8 shards. The consumption rate is
measured by a short `bonsai train` of the demo's tiny Phi on this machine; Phi-2 on an H100 at 50 %
MFU is estimated (6 x 2.78e9 FLOPs per token, 989 TFLOP/s dense bf16): both are printed with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, run_bonsai

SAMPLE = ROOT / "data" / "sample"
PHI2_PARAMS, H100_BF16_FLOPS = 2.78e9, 989e12


def write_dataset(directory: Path, n: int, shards: int = 8) -> Path:
    base = [json.loads(line) for p in sorted(SAMPLE.glob("*.jsonl")) for line in p.read_text(encoding="utf-8").splitlines()]
    directory.mkdir(parents=True, exist_ok=True)
    files = [(directory / f"part-{s:05d}.jsonl").open("w", encoding="utf-8") for s in range(shards)]
    for i in range(n):
        record = dict(base[i % len(base)], id=f"bench-{i}")
        files[i % shards].write(json.dumps(record, ensure_ascii=False) + "\n")
    for f in files:
        f.close()
    return directory


def pipeline_rate(data_dir: Path, tokenizer, max_length: int) -> dict:
    from bonsai.config import DataConfig
    from bonsai.data.dataset import RankData

    data = RankData(DataConfig(path=str(data_dir), max_length=max_length, packing=True, eval_fraction=0.0),
                    tokenizer, seed=1, rank=0, world_size=1)
    start = time.perf_counter()
    rows = docs = tokens = 0
    for row in data.rows("train", epochs=1):
        rows += 1
        docs += len(row.documents)
        tokens += row.length
    seconds = time.perf_counter() - start
    return {"records_per_s": docs / seconds, "tokens_per_s": tokens / seconds, "records": docs,
            "padding_fraction": 1 - tokens / (rows * max_length)}


def model_rate(work: Path) -> float:
    """tokens/s of the demo's tiny Phi training on this machine (after warm-up, from summary.json)."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["train"].update(output_dir=str(work / "train"), max_steps=40, checkpoint_every=0)
    cfg["eval"] = {"every_steps": 0, "probes": None}
    cfg["logging"] = {"progress_bar": False, "wandb": {"mode": "disabled"}}
    cfg["model"]["cache_dir"] = str(work / "cache")
    run_bonsai(cfg, work / "train.yaml")
    return json.loads((work / "train" / "summary.json").read_text())["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from bonsai.config import ModelConfig, TinyPhiConfig
    from bonsai.model.loading import load_tokenizer
    from bonsai.model.source import tiny_phi_for

    work = Path(tempfile.mkdtemp(prefix="bonsai-pipeline-"))
    data_dir = write_dataset(work / "data", args.records)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    model_dir = tiny_phi_for(str(SAMPLE), TinyPhiConfig(**demo["model"]["tiny"]), work / "cache", seed=demo["train"]["seed"])
    tokenizer = load_tokenizer(str(model_dir), ModelConfig(name_or_path=str(model_dir)))

    runs = [pipeline_rate(data_dir, tokenizer, args.max_length) for _ in range(args.runs)]
    for r in runs:
        print(f"pipeline: {r['records_per_s']:9.0f} records/s  {r['tokens_per_s']:10.0f} tokens/s  "
              f"({r['records']} records, padding {r['padding_fraction']:.4f})", flush=True)
    pipe = statistics.median(r["tokens_per_s"] for r in runs)
    consumed = model_rate(work)
    phi2_h100 = 0.5 * H100_BF16_FLOPS / (6 * PHI2_PARAMS)
    print(f"\n{os.cpu_count()} CPUs, one process, max_length {args.max_length}, {args.records} records in 8 shards")
    print(f"pipeline (median of {args.runs}): {statistics.median(r['records_per_s'] for r in runs):.0f} records/s, "
          f"{pipe:.0f} tokens/s")
    print(f"tiny Phi (demo) training on this machine consumes {consumed:.0f} tokens/s: pipeline is {pipe / consumed:.1f}x")
    print(f"Phi-2 on one H100 at 50% MFU would consume ~{phi2_h100:.0f} tokens/s (estimate): pipeline is "
          f"{pipe / phi2_h100:.1f}x")


if __name__ == "__main__":
    main()
