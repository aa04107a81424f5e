"""`bonsai report RUN_DIR`: the loss curve with its events, per-category curves, and the records most
likely behind the trouble, each with the evidence against it.

A record's suspicion score adds up independent evidence:
- `loss_z`: its recent per-token loss against the other records of its category (robust z: median
  and MAD), since a record the model cannot learn while its peers are learned is noise or a mistake;
- `spike_batches`: how many instability events caught it among the top third of its batch by loss;
- `contradicts`: records with the same instruction and input but another answer;
- `script_says`: the language its output is written in, where that differs from its `lang` label;
- `odd_text`: an answer that is mostly symbols and digits, or loops (no model needed).
Where the rest of the data takes a side in a contradiction (more records give one answer; one of two
translations of a text is linked to it by other translation records; one side's answer is another question's), only the
other side counts as contradicting.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from bonsai.config import load_config
from bonsai import metric_keys as keys
from bonsai.data.checks import (borrowed_answers, find_contradictions, find_language_mismatches, outvoted,
                                 translation_support, ungrounded)
from bonsai.data.textmetrics import text_oddity
from bonsai.io import read_jsonl, write_json
from bonsai.observe.metrics import read_metrics
from bonsai.observe.monitor import merged_record_stats
from bonsai.rundir import RunDir
from bonsai.robust import by_group
from bonsai.data.dataset import read_valid_records
from bonsai.data.exclude import read_exclusions
from bonsai.data.records import Record

SPIKE_WEIGHT = 2.0  # one spike batch counts as much as 2 sigma of excess loss
FLAG_WEIGHT = 5.0  # a contradiction, a wrong language label or broken text is strong evidence on its own
# The training signal orders records but never outweighs a flag from the data: late in a run most records
# are memorised, the MAD of a category's loss is tiny and a merely hard record reaches z 10+ (on planted
# sets, uncapped loss put clean records above every plant). Together they stay below FLAG_WEIGHT.
LOSS_Z_CAP = 2.5
SPIKE_CAP = 1
TOP_N = 20
LOSS_Z_REASON = 3.0  # excess loss is named as a reason (and makes a suspect) above this robust z


def read_events(run_dir: Path) -> list[dict]:
    return read_jsonl(RunDir(run_dir).events, missing_ok=True)


def read_record_stats(run_dir: Path) -> dict[str, dict]:
    paths = sorted(RunDir(run_dir).record_stats_dir.glob("rank*.json"))
    return merged_record_stats([json.loads(p.read_text(encoding="utf-8")) for p in paths])


def rejected_sides(records: list[Record], contradictions: dict[str, list[str]]) -> dict[str, str]:
    """The contradicting records the rest of the data rejects, with why: their answer is outvoted, their
    translation is the one other translation records do not link to its source, their answer is not in
    the input that grounds the other side's, or their answer is another question's. Only these (or,
    where the data takes no side, both sides) are suspects."""
    rejected = {i: "outvoted" for i in outvoted(records)}
    linked = translation_support(records)
    for i, others in contradictions.items():
        if i not in linked and any(o in linked for o in others):
            rejected.setdefault(i, "other translations link its source to another answer")
    off_context = ungrounded(records, contradictions)
    for i, source in off_context.items():
        rejected.setdefault(i, f"its answer is not in the input; {source}'s is")
    borrowed = borrowed_answers(records, contradictions)
    for i, source in borrowed.items():
        # An answer its own input states is not a borrowed one, whatever other question also says it.
        if i not in off_context.values() and not all(o in borrowed for o in contradictions[i]):
            rejected.setdefault(i, f"its answer is {source}'s")
    return rejected


def score_records(records: list[Record], stats: dict[str, dict], events: list[dict]) -> list[dict]:
    by_category: dict[str, list[float]] = defaultdict(list)
    for s in stats.values():
        if s.get("ema_loss") is not None:
            by_category[s["category"]].append(s["ema_loss"])
    robust = by_group(by_category, floor=1e-6)
    center = {c: m for c, (m, _) in robust.items()}
    spread = {c: s for c, (_, s) in robust.items()}
    spikes: dict[str, int] = defaultdict(int)
    for event in events:
        rows = event.get("records", [])
        for row in rows[: max(1, len(rows) // 3)]:
            spikes[row["id"]] += 1
    contradictions = find_contradictions(records)
    rejected = rejected_sides(records, contradictions)
    backed = {i for i in contradictions if i not in rejected and any(o in rejected for o in contradictions[i])}
    mismatches = find_language_mismatches(records)
    oddities = {r.id: why for r in records if (why := text_oddity(r.output))}
    table = []
    for r in records:
        s = stats.get(r.id)
        loss = s["ema_loss"] if s and s.get("ema_loss") is not None else None
        loss_z = (loss - center[r.category]) / spread[r.category] if loss is not None else 0.0
        score = min(max(loss_z, 0.0), LOSS_Z_CAP) + SPIKE_WEIGHT * min(spikes[r.id], SPIKE_CAP)
        contradicted = r.id in contradictions and r.id not in backed
        # A contradiction the data takes no side in is wrong on one of its two sides: half the weight.
        side = 1.0 if r.id in rejected else 0.5
        score += FLAG_WEIGHT * (side * contradicted + (r.id in mismatches) + (r.id in oddities))
        why = []
        if loss_z > LOSS_Z_REASON:
            why.append(f"loss {loss:.2f} vs {r.category} median {center[r.category]:.2f} (z {loss_z:.1f})")
        if spikes[r.id]:
            why.append(f"in {spikes[r.id]} spike batch(es)")
        if contradicted:
            verdict = f" ({rejected[r.id]})" if r.id in rejected else ""
            why.append(f"same instruction as {', '.join(contradictions[r.id][:3])} with another answer{verdict}")
        if r.id in oddities:
            why.append(oddities[r.id])
        if r.id in mismatches:
            why.append(f"labelled {r.lang} but written in {mismatches[r.id]}")
        table.append({
            "id": r.id, "category": r.category, "lang": r.lang, "score": round(score, 3),
            "loss": loss, "category_median_loss": center.get(r.category), "loss_z": round(loss_z, 3),
            "seen": s["seen"] if s else 0, "spike_batches": spikes[r.id],
            "contradicts": contradictions.get(r.id, []), "script_says": mismatches.get(r.id),
            "odd_text": oddities.get(r.id), "why": "; ".join(why),
        })
    table.sort(key=lambda row: (row["score"], row["loss_z"]), reverse=True)  # z orders what the caps tie
    return table


SMOOTHING = 0.8  # per-category losses come from a few records per step: smooth them to see the trend


def _smooth(values) -> list[float]:
    out, ema = [], None
    for v in values:
        ema = v if ema is None else SMOOTHING * ema + (1 - SMOOTHING) * v
        out.append(ema)
    return out


def _plot(run_dir: Path, metrics: list[dict], events: list[dict], suspects: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 11))
    grid = fig.add_gridspec(3, 2, height_ratios=[1.1, 1, 1.2])
    ax = fig.add_subplot(grid[0, :])
    train = [(m["step"], m[keys.TRAIN_LOSS]) for m in metrics if isinstance(m.get(keys.TRAIN_LOSS), float)]
    ax.plot(*zip(*train), lw=1, label="train loss") if train else None
    evals = [(m["step"], m[keys.EVAL_LOSS]) for m in metrics if keys.EVAL_LOSS in m]
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    colors = {"loss_spike": "red", "grad_spike": "orange", "nonfinite": "black", "trend": "purple"}
    for kind, color in colors.items():
        steps = [e["step"] for e in events if e["kind"] == kind]
        for i, s in enumerate(steps):
            ax.axvline(s, color=color, alpha=0.5, lw=1, label=kind if i == 0 else None)
    ax.set(title=f"{run_dir.name}: loss and instability events", xlabel="step", ylabel="loss")
    ax.legend(loc="upper right")
    for col, (kind, name) in enumerate(((keys.CATEGORY, "category"), (keys.LANGUAGE, "language"))):
        axc = fig.add_subplot(grid[1, col])
        prefix = keys.TRAIN_LOSS + kind
        shown = sorted({k for m in metrics for k in m if k.startswith(prefix)})
        for key in shown:
            steps, values = zip(*[(m["step"], m[key]) for m in metrics if key in m])
            axc.plot(steps, _smooth(values), lw=1, label=key.removeprefix(prefix))
        axc.set(title=f"train loss per {name} (EMA {SMOOTHING})", xlabel="step")
        if shown:
            axc.legend(fontsize=7)
    axt = fig.add_subplot(grid[2, :])
    axt.axis("off")
    rows = [[s["id"], s["category"], s["lang"], f"{s['score']:.1f}", s["why"][:90]] for s in suspects[:15]]
    if rows:
        tab = axt.table(cellText=rows, colLabels=["record", "category", "lang", "score", "why"], loc="upper center",
                        colWidths=[0.17, 0.12, 0.05, 0.06, 0.6], cellLoc="left")
        tab.auto_set_font_size(False)
        tab.set_fontsize(7)
    axt.set_title("suspect records")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def find_suspects(run_dir: Path) -> list[dict]:
    """Every record of the run's data with a stated reason, most suspect first; the score only orders them."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    excluded = read_exclusions(cfg.data.exclude) if cfg.data.exclude else frozenset()
    records = [r for r in read_valid_records(cfg.data.path) if r.id not in excluded]  # what the run trained on
    scored = score_records(records, read_record_stats(run_dir), read_events(run_dir))
    return [s for s in scored if s["why"]]


def write_report(run_dir: Path, out: Path | None = None, live: str | None = None) -> dict:
    """report.json and report.png into `out` (default: the run dir). `live`: who is still training in it."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: is it a Bonsai run directory?")
    metrics, events = read_metrics(run_dir), read_events(run_dir)
    suspects = find_suspects(run_dir)
    report = {
        "run_dir": str(run_dir),
        "steps": max((m["step"] for m in metrics), default=0),
        "live": live,
        "events": [{k: e[k] for k in ("step", "kind", "value", "threshold", "action")} for e in events],
        "suspects": suspects[:TOP_N],
    }
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RunDir(run_dir).report_json.name, report)
    _plot(run_dir, metrics, events, suspects, out / RunDir(run_dir).report_png.name)
    report["written"] = [str(out / RunDir(run_dir).report_png.name), str(out / RunDir(run_dir).report_json.name)]
    return report


def summary_text(report: dict) -> str:
    lines = [f"{report['run_dir']}: {report['steps']} steps, {len(report['events'])} event(s)"]
    if report.get("live"):
        lines.append(f"the run is still training ({report['live']}): per-record statistics are those of its last "
                     f"checkpoint{'' if report['suspects'] else ' (none written yet: no suspects to rank)'}")
    for e in report["events"][:10]:
        lines.append(f"  step {e['step']}: {e['kind']} ({e['value']} vs {e['threshold']}) -> {e['action']}")
    lines.append("suspect records (most suspect first):")
    for s in report["suspects"][:10]:
        lines.append(f"  {s['id']} [{s['category']}/{s['lang']}] score {s['score']:.1f}: {s['why']}")
    lines.append(f"written: {', '.join(report['written'])}")
    return "\n".join(lines)
