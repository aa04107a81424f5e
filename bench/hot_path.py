"""The training step's hot path on CPU: attention over packed rows, and the loss at Phi-2's vocabulary.

    .venv/bin/python bench/hot_path.py attention   # dense block mask vs sdpa_varlen, rows of 2048 and 4096
    .venv/bin/python bench/hot_path.py loss        # whole-row logits vs chunked loss, Phi-2's head
    .venv/bin/python bench/hot_path.py             # both

attention: rows packed best-fit from data/sample (documents of the sample's sizes), a random-init Phi of
4 layers, hidden 256, 8 heads of 32 (the tiny tokenizer's vocabulary), fp32; forward + backward through
Bonsai's forward_loss, micro-batch 1. Figures: tokens/s (median of the timed steps) and peak RSS above the
RSS after set-up.
loss: one forward + backward of Phi-2's head (hidden 2560 -> vocab 51,200, fp32) over 2048 positions, with
the weight's gradient allocated beforehand (a training step always holds it); peak RSS above that, and
that peak less one weight-sized gradient (500 MiB), which every method produces once on its way into .grad.
Every case runs in its own process, so each peak is its own.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTENTION_CASES = [(impl, length) for length in (2048, 4096) for impl in ("sdpa", "sdpa_varlen")]
LOSS_CASES = [0, 1024, 512, 256, 128]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _reset_peak() -> float:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, which it returns."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    return _status_mib("VmHWM")


def _packed_rows(tokenizer, length: int, rows: int):
    from bonsai.data.packing import Document, collate, pack_best_fit
    from bonsai.data.records import Where, validate_record
    from bonsai.data.stream import StreamPosition
    from bonsai.data.template import encode_record
    from bonsai.io import iter_jsonl

    docs = []
    for path in sorted((ROOT / "data" / "sample").glob("*.jsonl")):
        for n, raw in iter_jsonl(path):
            record = validate_record(raw, Where(str(path), n))
            docs.append(Document(record, encode_record(tokenizer, record), Where(str(path), n),
                                 StreamPosition(0, len(docs))))
    packed = list(pack_best_fit(docs * 8, length, window=len(docs) * 8))[:rows]
    sizes = [len(d) for row in packed for d in row.documents]
    return [collate([row], tokenizer.pad_token_id, pad_to=length) for row in packed], statistics.mean(sizes)


def attention_case(implementation: str, length: int, steps: int = 4) -> dict:
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    from bonsai.config import ModelConfig, TinyPhiConfig
    from bonsai.model.loading import load_model, load_tokenizer
    from bonsai.model.loss import forward_loss
    from bonsai.model.source import tiny_phi_for

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_phi_for(str(ROOT / "data" / "sample"), TinyPhiConfig(), Path(tmp), seed=0)
        tokenizer = load_tokenizer(str(tiny), ModelConfig(name_or_path=str(tiny)))
        shape = PhiConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                          num_attention_heads=8, max_position_embeddings=4096, partial_rotary_factor=0.4,
                          resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        PhiForCausalLM(shape).save_pretrained(Path(tmp) / "model")
        model = load_model(str(Path(tmp) / "model"), ModelConfig(name_or_path=str(Path(tmp) / "model"),
                                                                 attn_implementation=implementation), torch.float32)
    batches, mean_doc = _packed_rows(tokenizer, length, steps + 1)
    base = _reset_peak()
    times = []
    for batch in batches:
        started = time.perf_counter()
        forward_loss(model, batch).loss_sum.backward()
        times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    return {"attention": implementation, "length": length, "mean_doc_tokens": round(mean_doc, 1),
            "docs_per_row": round(sum(len(b.records) for b in batches) / len(batches), 1),
            "tokens_per_s": round(length / statistics.median(times[1:]), 1),
            "peak_above_setup_mib": round(_peak_mib() - base, 1)}


def loss_case(chunk: int, positions: int = 2048, hidden: int = 2560, vocab: int = 51200) -> dict:
    import torch
    from torch import nn

    from bonsai.model.loss_head import ChunkedLossHead

    torch.manual_seed(0)
    head = nn.Linear(hidden, vocab)
    if chunk:
        head = ChunkedLossHead(head, chunk)
    head.weight.grad, head.bias.grad = torch.zeros_like(head.weight), torch.zeros_like(head.bias)
    states = torch.randn(1, positions + 1, hidden, requires_grad=True)
    targets = torch.randint(0, vocab, (1, positions))
    base = _reset_peak()
    started = time.perf_counter()
    if chunk:
        with head.scoring(targets):
            losses = head(states)
    else:
        logits = head(states)[:, :-1]
        losses = nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), reduction="none")
    losses.sum().backward()
    peak = _peak_mib() - base
    weight_grad = head.weight.numel() * 4 / 2**20  # produced once by every method, accumulated into .grad
    return {"chunk_tokens": chunk or "whole row", "seconds": round(time.perf_counter() - started, 2),
            "peak_above_setup_mib": round(peak, 1), "peak_less_weight_grad_mib": round(peak - weight_grad, 1),
            "loss_sum": round(float(losses.sum()), 2)}


def _in_own_process(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "_case", kind, *map(str, args)], capture_output=True, text=True,
                         cwd=ROOT, timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["_case"]:
        kind, *args = sys.argv[2:]
        result = attention_case(args[0], int(args[1])) if kind == "attention" else loss_case(int(args[0]))
        print(json.dumps(result))
        return
    which = sys.argv[1:] or ["attention", "loss"]
    if "attention" in which:
        for implementation, length in ATTENTION_CASES:
            print(json.dumps(_in_own_process("attention", implementation, length)), flush=True)
    if "loss" in which:
        for chunk in LOSS_CASES:
            print(json.dumps(_in_own_process("loss", chunk)), flush=True)


if __name__ == "__main__":
    main()
