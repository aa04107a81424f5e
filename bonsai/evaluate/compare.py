"""`bonsai eval MODEL... --data PATH`: the same records through several models (checkpoints, exports,
adapters), side by side: loss per category and language, and generation quality and repetition."""

from __future__ import annotations

import json
from pathlib import Path


from bonsai.config import DecodeConfig
from bonsai.data.dataset import read_valid_records
from bonsai.evaluate.generation import average_by_category, generate, generation_rows
from bonsai.model.loss import breakdown_metrics, eval_loss_sums
from bonsai.model.loading import load_for_inference
from bonsai.data.packing import Document, Row, collate
from bonsai.data.records import Record, Where
from bonsai.data.stream import StreamPosition
from bonsai.data.template import encode_record, use_template
from bonsai.metric_keys import CATEGORY, EVAL_BITS_PER_BYTE, EVAL_LOSS, GENERATION, LANGUAGE


def loss_breakdown(model, tokenizer, records: list[Record], batch_size: int, prefix: str = EVAL_LOSS,
                   bits_prefix: str = EVAL_BITS_PER_BYTE) -> dict[str, float]:
    device = next(model.parameters()).device
    docs = [Document(r, encode_record(tokenizer, r), Where("eval", i), StreamPosition(0, i)) for i, r in enumerate(records)]
    batches = [collate([Row([d]) for d in docs[start : start + batch_size]], tokenizer.pad_token_id)
               for start in range(0, len(docs), batch_size)]
    return breakdown_metrics(prefix, eval_loss_sums(model, batches, device, tokenizer.pad_token_id).tolist(), bits_prefix)


def evaluate_model(path: str, records: list[Record], decode: DecodeConfig, generate_limit: int,
                   trust_remote_code: bool = False, template: str | None = None) -> dict:
    model, tokenizer = load_for_inference(path, trust_remote_code)
    if template:
        use_template(tokenizer, template)
    metrics = loss_breakdown(model, tokenizer, records, decode.batch_size)
    sample = records[:generate_limit]
    outputs = generate(model, tokenizer, sample, decode)
    rows = generation_rows(tokenizer, sample, outputs, [r.output for r in sample])
    metrics.update(average_by_category(rows, GENERATION))
    return {"model": path, "metrics": metrics, "generations": rows}


def compare(models: list[str], data: str, out_dir: Path, decode: DecodeConfig, generate_limit: int,
            trust_remote_code: bool = False, template: str | None = None) -> dict:
    records = read_valid_records(data)
    if not records:
        raise ValueError(f"--data {data}: no valid records")
    results = [evaluate_model(m, records, decode, generate_limit, trust_remote_code, template) for m in models]
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"data": data, "records": len(records), "generated": min(generate_limit, len(records)),
               "models": [{"model": r["model"], "metrics": r["metrics"]} for r in results]}
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    with (out_dir / "eval_generations.jsonl").open("w", encoding="utf-8") as f:
        for r in results:
            for row in r["generations"]:
                f.write(json.dumps({"model": r["model"], **row}, ensure_ascii=False) + "\n")
    _plot(summary, out_dir / "eval.png")
    return summary


def table_text(summary: dict) -> str:
    names = [Path(m["model"]).name or m["model"] for m in summary["models"]]
    keys = sorted({k for m in summary["models"] for k in m["metrics"]},
                  key=lambda k: (k.split("/")[0], k.count("/"), k))
    width = max(len(k) for k in keys) + 2
    lines = [f"{'metric':<{width}}" + "".join(f"{n[:18]:>20}" for n in names)]
    for key in keys:
        values = [m["metrics"].get(key) for m in summary["models"]]
        lines.append(f"{key:<{width}}" + "".join(f"{v:>20.4f}" if v is not None else f"{'-':>20}" for v in values))
    return "\n".join(lines)


def _plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(EVAL_LOSS + CATEGORY, "loss per category"), (EVAL_LOSS + LANGUAGE, "loss per language"),
              (f"{GENERATION}/repeated_3gram_ratio{CATEGORY}", "repeated 3-gram ratio per category")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    n = len(summary["models"])
    for ax, (prefix, title) in zip(axes, panels):
        keys = sorted({k for m in summary["models"] for k in m["metrics"] if k.startswith(prefix)})
        for i, m in enumerate(summary["models"]):
            xs = [j + i / (n + 1) for j in range(len(keys))]
            ax.bar(xs, [m["metrics"].get(k, 0) for k in keys], width=1 / (n + 1), label=Path(m["model"]).name)
        ax.set_xticks([j + (n - 1) / (2 * (n + 1)) for j in range(len(keys))])
        ax.set_xticklabels([k.removeprefix(prefix) for k in keys], rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
