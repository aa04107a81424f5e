"""How well `bonsai report`'s suspect ranking finds the defects planted in the hand-written sets of
bench/sets/ (written by others, see bench/sets/README.md): recall at k = number planted, per kind, and
how many clean records the top k holds.

    .venv/bin/python bench/suspects.py                      # every set under bench/sets/
    .venv/bin/python bench/suspects.py dev_a dev_b --work /tmp/suspects   # keep the runs; rerank them later

Each set is trained with the README's recipe (configs/demo.yaml, data.path=<the set's data.jsonl>,
train.max_steps=200, data.on_bad_record=skip, W&B off) into --work (a temporary directory unless given) and reported with
`bonsai report`; the ranking scored is `find_suspects`, the list the report and `bonsai data clean`
take their suspects from (report.json keeps the first 20). A run already finished under --work is
reused, so a change to the ranking alone is measured again in seconds. --clean-sample also trains the
shipped clean sample (data/sample) and prints how long its suspect list is, with its scores. --ablate
ranks each set again with each signal of the score left out (bonsai.observe.report.SIGNALS), and from
the data alone (no training signal): what each one adds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from common import ROOT, SETS, run_bonsai

from bonsai.observe.report import SIGNALS, find_suspects

NAMED_KINDS = ("contradiction", "misaligned_translation", "truncated", "echo_or_loop", "wrong_language")


def train_and_report(data: Path, run_dir: Path, cache: Path, steps: int) -> Path:
    """The README's recipe on `data`, then `bonsai report`; a finished run under `run_dir` is reused."""
    if not (run_dir / "summary.json").exists():
        cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
        # One record of heldout_a is past the demo's max_length: it is quarantined (the README's hint), not
        # trained; the report still ranks it from the data.
        cfg["data"].update(path=str(data), on_bad_record="skip")
        cfg["train"].update(output_dir=str(run_dir), max_steps=steps)
        cfg["model"] = {**cfg["model"], "cache_dir": str(cache)}
        run_bonsai(cfg, run_dir.parent / f"{run_dir.name}.yaml")
    report = subprocess.run([sys.executable, "-m", "bonsai.cli", "report", str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if report.returncode:
        raise RuntimeError(f"bonsai report {run_dir} exited {report.returncode}:\n{report.stderr[-3000:]}")
    return run_dir


def score(ranked: list[str], kinds: dict[str, str]) -> dict:
    """Recall at k = number planted (overall and per kind) and the clean records among the top k."""
    k = len(kinds)
    top = ranked[:k]
    hits = Counter(kinds[i] for i in top if i in kinds)
    planted = Counter(kinds.values())
    return {"k": k, "recall": sum(hits.values()) / k, "clean_in_top": sum(i not in kinds for i in top),
            "per_kind": {kind: (hits[kind], n) for kind, n in planted.items()}, "listed": len(ranked)}


def row(name: str, figures: dict) -> str:
    per_kind = figures["per_kind"]
    named = " ".join(f"{'%d/%d' % per_kind[k] if k in per_kind else '-':>6}" for k in NAMED_KINDS)
    own = next(((kind, hits, n) for kind, (hits, n) in per_kind.items() if kind not in NAMED_KINDS), None)
    own_text = f"{own[0]} {own[1]}/{own[2]}" if own else "-"
    return (f"{name:<16} {figures['k']:>3} {figures['recall']:>6.2f} {figures['clean_in_top'] / figures['k']:>6.2f}"
            f" {figures['listed']:>6}  {named}  {own_text}")


def ablations() -> list[tuple[str, tuple[str, ...]]]:
    """(name, signals): the score without each signal, and from the data alone."""
    data_only = tuple(s for s in SIGNALS if s not in ("loss", "eos", "spikes"))
    no_truncation = tuple(s for s in SIGNALS if s not in ("ending", "eos"))  # the two say the same of a cut-off
    return ([(f"-{s}", tuple(x for x in SIGNALS if x != s)) for s in SIGNALS]
            + [("-ending -eos", no_truncation), ("data only", data_only)])


HEADER = (f"{'set':<16} {'k':>3} {'recall':>6} {'clean':>6} {'listed':>6}  "
          + " ".join(f"{k[:6]:>6}" for k in NAMED_KINDS) + "  own kind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help="names under bench/sets/ or set directories (default: all)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--work", type=Path, help="where the runs go (and are reused from); default: a temp dir")
    parser.add_argument("--clean-sample", action="store_true", help="also the clean sample's suspect list")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--ablate", action="store_true", help="also rank without each signal in turn")
    args = parser.parse_args()
    names = args.sets or sorted(p.name for p in SETS.iterdir() if (p / "labels.json").exists())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(HEADER + "\n(recall at k = planted; clean: share of the top k that is clean; listed: suspects with a reason)")
        results = {}
        for name in names:
            folder = Path(name) if Path(name).is_dir() else SETS / name
            kinds = {i: v["kind"] for i, v in json.loads((folder / "labels.json").read_text())["planted"].items()}
            run_dir = train_and_report(folder / "data.jsonl", work / folder.name, work / "cache", args.steps)
            ranked = [s["id"] for s in find_suspects(run_dir)]
            results[folder.name] = score(ranked, kinds)
            print(row(folder.name, results[folder.name]), flush=True)
            if args.ablate:
                for name, signals in ablations():
                    ranked = [s["id"] for s in find_suspects(run_dir, signals)]
                    results[f"{folder.name} {name}"] = score(ranked, kinds)
                    print(row(f"  {name}", results[f"{folder.name} {name}"]), flush=True)
        if args.clean_sample:
            run_dir = train_and_report(ROOT / "data" / "sample", work / "sample", work / "cache", args.steps)
            suspects = find_suspects(run_dir)
            results["sample"] = {"listed": len(suspects), "scores": [s["score"] for s in suspects]}
            print(f"clean sample: {len(suspects)} suspect(s) with a reason; scores "
                  + ", ".join(f"{s['score']:.1f}" for s in suspects[:25]))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
