"""Per-document attention (`sdpa_varlen`) against sdpa over a dense block mask, by row length, on CPU.

    PYTHONPATH=. .venv/bin/python bench/attention_paths.py   # --lengths 256 512 1024 2048 --repeats 5

Bonsai's own packed rows of the sample records (its data code, seed and best-fit packing, through
bench/framework_cost.py's bonsai_rows) at each max_length, 2048 row slots per call (8 rows at 256, 1 at
2048); random queries, keys and values at two head shapes: the benchmarks' tiny Phi (8 heads x 32) and
Phi-2 (32 heads x 80). Times one attention forward + backward, as the model calls it (transformers'
attention-function signature), median of `--repeats` after a warm-up. What `model.attn_implementation:
auto` does on a CPU follows from these figures (bonsai.model.attention.resolve_attention).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import build_model
from framework_cost import bonsai_rows

HEADS = {"tiny (8 x 32)": (8, 32), "phi-2 (32 x 80)": (32, 80)}
SLOTS = 2048


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_length(model_dir: Path, length: int, repeats: int) -> dict[str, tuple[float, float]]:
    from bonsai.data.packing import block_causal_mask, collate
    from bonsai.model.attention import sdpa_varlen_forward

    args = argparse.Namespace(max_length=length, rows=SLOTS // length, steps=20)
    steps, pad_id = bonsai_rows(model_dir, args)
    rows = steps[-1]  # a row set past the first, longest-first window
    batch = collate(rows, pad_id, length)
    mask = block_causal_mask(batch.doc_index)
    out = {}
    for name, (heads, dim) in HEADS.items():
        q, k, v = (torch.randn(len(rows), heads, length, dim, requires_grad=True) for _ in range(3))

        def varlen():
            o, _ = sdpa_varlen_forward(None, q, k, v, None, position_ids=batch.position_ids)
            o.sum().backward()

        def dense():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()

        out[name] = (timed(varlen, repeats), timed(dense, repeats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_model(Path(work))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per attention forward + backward, "
              f"{SLOTS} row slots")
        print("| max_length | heads | sdpa_varlen ms | sdpa + block mask ms | varlen / mask |")
        print("|---|---|---|---|---|")
        for length in args.lengths:
            for name, (varlen, dense) in one_length(model_dir, length, args.repeats).items():
                print(f"| {length} | {name} | {varlen * 1e3:.1f} | {dense * 1e3:.1f} | {varlen / dense:.2f} |", flush=True)


if __name__ == "__main__":
    main()
