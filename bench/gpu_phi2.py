"""Phi-2-sized SFT on one GPU: tokens/s/GPU, MFU and peak memory, full fine-tuning under ZeRO-2 and LoRA.

    .venv/bin/python bench/gpu_phi2.py                      # on a machine with one CUDA GPU
    .venv/bin/python bench/gpu_phi2.py --shape small --steps 4 --cpu   # check the script itself on a CPU

The model is random-init with Phi-2's shape (2560 hidden, 32 layers, 32 heads, 51,200 vocabulary,
partial rotary 0.4; 2.78 B parameters), built and loaded through the same code path as
`microsoft/phi-2` (no hub access needed). bf16, sequence length 2048, packed sample records, attention `auto` (flash_attention_2 when installed,
else per-document sdpa) and the chunked loss; `--attn sdpa --loss-chunk 0` measures the old path. MFU uses
PaLM's 6N + 12LHS FLOPs per token and --peak-tflops (989: H100 SXM dense bf16). Peak memory is
torch.cuda.max_memory_allocated on rank 0, logged by Bonsai as memory/max_allocated_gb.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, run_bonsai, step_rows

SHAPES = {
    "phi2": {"hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 51200,
             "max_position_embeddings": 2048},
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 2048,
              "max_position_embeddings": 2048},
}  # fmt: skip


def run(mode: str, args, work: Path) -> dict:
    run_dir = work / mode
    full = mode == "full-zero2"
    cfg = {
        "model": {"name_or_path": "tiny-phi", "cache_dir": str(work / "cache"), "tiny": SHAPES[args.shape],
                  "finetune": "full" if full else "lora", "gradient_checkpointing": args.grad_ckpt,
                  "attn_implementation": args.attn, "loss_chunk_tokens": args.loss_chunk},
        "data": {"path": str(ROOT / "data" / "sample"), "max_length": args.seq, "packing": True, "eval_fraction": 0.0},
        "train": {"output_dir": str(run_dir), "seed": 0, "max_steps": args.steps, "micro_batch_size": args.micro_batch,
                  "gradient_accumulation_steps": 1, "lr": 1e-5 if full else 2e-4, "warmup_steps": 1,
                  "precision": "fp32" if args.cpu else "bf16", "log_every": 1, "checkpoint_every": 0,
                  "keep_checkpoints": 1},
        "eval": {"every_steps": 0, "probes": None},
        "logging": {"progress_bar": False, "wandb": {"mode": "disabled"}, "peak_tflops_per_device": args.peak_tflops},
        "monitor": {"on_nonfinite": "rollback"},
    }  # fmt: skip
    launch = None
    if full:  # ZeRO-2 on one GPU: DeepSpeed's optimizer and bf16 path, as on a multi-GPU box
        launch = ["--config_file", str(ROOT / "launch" / "zero2.yaml"), "--num_processes", "1"]
    run_bonsai(cfg, work / f"{mode}.yaml", launch, timeout_s=3600)
    rows = list(step_rows(run_dir).values())
    timed = [r for r in rows if r["step"] > args.warmup]
    seconds = timed[-1]["time"] - rows[args.warmup - 1]["time"]
    tokens = timed[-1]["train/num_input_tokens_seen"] - rows[args.warmup - 1]["train/num_input_tokens_seen"]
    return {
        "tokens_per_s": tokens / seconds,
        "mfu": statistics.median(r["train/mfu"] for r in timed) if "train/mfu" in timed[0] else None,
        "peak_memory_gb": max((r.get("memory/max_allocated_gb") or 0) for r in rows),
        "final_loss": rows[-1]["train/loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="phi2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing (for larger micro-batches)")
    parser.add_argument("--attn", default="auto", help="model.attn_implementation (sdpa: the dense-mask baseline)")
    parser.add_argument("--loss-chunk", type=int, default=256, help="model.loss_chunk_tokens (0: whole-row logits)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--modes", nargs="+", default=["full-zero2", "lora"])
    parser.add_argument("--cpu", action="store_true", help="fp32 on the CPU: checks the script, measures nothing useful")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bonsai-gpu-"))
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    for mode in args.modes:
        r = run(mode, args, work)
        mfu = f"{r['mfu'] * 100:.1f} %" if r["mfu"] is not None else "n/a"
        print(f"{device}, {args.shape}, seq {args.seq}, micro-batch {args.micro_batch}, {mode}, attention "
              f"{args.attn}, loss chunk {args.loss_chunk}: "
              f"{r['tokens_per_s']:.0f} tokens/s/GPU, MFU {mfu}, peak memory {r['peak_memory_gb']:.1f} GB, "
              f"loss {r['final_loss']:.3f} (steps {args.warmup + 1}-{args.steps})", flush=True)


if __name__ == "__main__":
    main()
