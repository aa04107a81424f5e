"""The A/B of an ablation: per metric, the baseline's and the cleaned run's mean over seeds, their
difference, the noise band the seeds give, and a verdict; written as ablate.json and ablate.png and
printed as a table."""

from __future__ import annotations

import math
from statistics import mean, stdev, variance
from pathlib import Path

from bonsai.io import write_json
from bonsai.metric_keys import CATEGORY, TRAIN_LOSS
from bonsai.observe.metrics import read_metrics
from bonsai.observe.report import read_events

# Which way is better. Losses, repetition and detector events: lower; diversity and quality: higher.
HIGHER_IS_BETTER = ("gen/distinct_1", "gen/distinct_2", "gen/chrf", "gen/contains", "gen/exact", "gen/eos_rate")
NEUTRAL = ("gen/length",)  # longer is neither better nor worse
# Student's t, two-sided 95 %, by degrees of freedom (1-30); beyond 30, the normal 1.96.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def direction(metric: str) -> int:
    """+1 where higher is better, -1 where lower is, 0 where neither."""
    if metric in NEUTRAL:
        return 0
    return 1 if metric in HIGHER_IS_BETTER else -1


def noise_band(baseline: list[float], cleaned: list[float]) -> float | None:
    """How far the two means may differ by the seed alone: the half-width of the 95 % interval of their
    difference (Student's t, variance pooled over both arms' seeds, 2(n-1) degrees of freedom), so a
    difference beyond it is what a two-sample t-test calls significant. None with one seed per arm."""
    n = min(len(baseline), len(cleaned))
    if n < 2:
        return None
    pooled = (variance(baseline) + variance(cleaned)) / 2
    dof = 2 * (n - 1)
    return (T_975[dof - 1] if dof <= len(T_975) else 1.96) * math.sqrt(2 * pooled / n)


def verdict(metric: str, difference: float, band: float | None) -> str:
    if band is None:
        return "one seed: no band"
    if abs(difference) <= band:
        return "within noise"
    way = direction(metric)
    if way == 0:
        return "higher" if difference > 0 else "lower"
    return "better" if difference * way > 0 else "worse"


def compare_arms(measured: dict[str, list[dict[str, float]]]) -> list[dict]:
    """measured: arm -> one metrics dict per seed. One row per metric both arms have (finite values)."""
    rows = []
    names = set.intersection(*(set().union(*runs) for runs in measured.values()))
    for metric in sorted(names, key=lambda k: (k.split("/")[0], k.count("/"), k)):
        values = {arm: [m[metric] for m in runs if math.isfinite(m.get(metric, math.nan))]
                  for arm, runs in measured.items()}
        if not all(values.values()):
            continue
        base, clean = mean(values["baseline"]), mean(values["cleaned"])
        band = noise_band(values["baseline"], values["cleaned"])
        rows.append({"metric": metric, "baseline": base, "cleaned": clean, "difference": clean - base,
                     "noise_band": band, "verdict": verdict(metric, clean - base, band),
                     "seeds": values})
    return rows


def table_text(summary: dict) -> str:
    lines = [f"{'metric':<44}{'baseline':>10}{'cleaned':>10}{'diff':>10}{'band':>10}  verdict"]
    for row in summary["comparison"]:
        band = f"{row['noise_band']:>10.4f}" if row["noise_band"] is not None else f"{'-':>10}"
        lines.append(f"{row['metric']:<44}{row['baseline']:>10.4f}{row['cleaned']:>10.4f}"
                     f"{row['difference']:>+10.4f}{band}  {row['verdict']}")
    return "\n".join(lines)


def write_ab(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablate.json", summary)
    _plot(summary, out / "ablate.png")


# The generation panel: ratios in [0, 1] (chrF, 0-100, is drawn divided by 100).
GEN_PANEL = {"gen/repeated_3gram_ratio": 1, "gen/distinct_2": 1, "gen/contains": 1, "gen/chrf": 100}


def _bars(ax, rows: list[dict], labels: list[str], title: str, scales: list[float] | None = None) -> None:
    if not rows:
        ax.set_title(f"{title}: none")
        ax.axis("off")
        return
    scales = scales or [1] * len(rows)
    for i, arm in enumerate(("baseline", "cleaned")):
        means = [r[arm] / k for r, k in zip(rows, scales)]
        spread = [stdev(r["seeds"][arm]) / k if len(r["seeds"][arm]) > 1 else 0
                  for r, k in zip(rows, scales)]
        ax.bar([j + 0.4 * i for j in range(len(rows))], means, width=0.4, yerr=spread, capsize=2, label=arm)
    ax.set_xticks([j + 0.2 for j in range(len(rows))])
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=8)


MARKS = {"better": " (+)", "worse": " (-)"}  # beyond the noise band, either way


def _breakdown(ax, summary: dict, prefix: str, title: str) -> None:
    rows = [r for r in summary["comparison"] if r["metric"] == prefix or r["metric"].startswith(prefix + CATEGORY)]
    labels = [r["metric"].removeprefix(prefix + CATEGORY).replace(prefix, "all") + MARKS.get(r["verdict"], "")
              for r in rows]
    _bars(ax, rows, labels, title)


def _curves(ax, summary: dict) -> None:
    colours = {"baseline": "tab:blue", "cleaned": "tab:orange"}
    for run in summary["runs"]:
        rows = [r for r in read_metrics(Path(run["run_dir"])) if isinstance(r.get(TRAIN_LOSS), float)]
        label = f"{run['arm']} seed {run['seed']}"
        ax.plot([r["step"] for r in rows], [r[TRAIN_LOSS] for r in rows], lw=0.8, color=colours[run["arm"]],
                alpha=0.8, label=label)
        steps = [e["step"] for e in read_events(Path(run["run_dir"]))]
        ax.scatter(steps, [next((r[TRAIN_LOSS] for r in rows if r["step"] == s), math.nan) for s in steps],
                   marker="x", color=colours[run["arm"]], s=20)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss (x: detector events)")
    ax.legend(fontsize=7)


def _plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _breakdown(axes[0][0], summary, "heldout_loss", "held-out loss per category")
    _breakdown(axes[0][1], summary, "contested_loss", "loss on the kept records that the excluded contradicted")
    _curves(axes[1][0], summary)
    gen = [r for r in summary["comparison"] if r["metric"] in GEN_PANEL]
    _bars(axes[1][1], gen, [r["metric"].removeprefix("gen/") + ("/100" if r["metric"] == "gen/chrf" else "")
                            for r in gen], "generation (probes and held-out records)",
          [GEN_PANEL[r["metric"]] for r in gen])
    seeds = len(summary["seeds"])
    fig.suptitle(f"ablation: {summary['excluded']} records excluded, {seeds} seed(s); "
                 f"{summary['heldout']} held-out, {summary['contested']} contested records\n"
                 "(+) / (-) after a category: the cleaned run better / worse beyond the seeds' noise band")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
