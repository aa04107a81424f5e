"""How well the report's suspect ranking finds planted bad records: precision and recall at k = number
planted, overall and per kind, on varied planted sets (tests/planted.py: five kinds, drawn from the
shipped sample with a seed), at two ratios and two seeds.

    .venv/bin/python bench/planted.py                 # --ratios 0.01 0.05 --seeds 0 1 --steps 200

Each set is ranked twice: from the data alone (contradictions, language labels, broken text: no
training), and after training the demo's tiny Phi on it for --steps steps (adding per-record loss and
spike batches), as `bonsai report` ranks it. Also printed: of the planted contradictions, how often the
clean record it contradicts ranks below it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from common import ROOT, run_bonsai

sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_shards  # noqa: E402  (planted.py imports conftest too)
from planted import PLANT_KINDS, precision_recall_at_k, varied_planted_set  # noqa: E402

from bonsai.data.records import Where, validate_record  # noqa: E402
from bonsai.observe.report import find_suspects, score_records  # noqa: E402


def train(work: Path, data: Path, steps: int) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"].update(path=str(data), eval_fraction=0.0)
    cfg["train"].update(output_dir=str(work / "run"), max_steps=steps, lr=3e-3, warmup_steps=10)
    cfg["monitor"] = {"loss_z": 3.0, "grad_z": 3.0}  # as tests/test_instability.py's planted run
    cfg["eval"] = {"probes": None}
    cfg["model"]["cache_dir"] = str(work / "cache")
    run_bonsai(cfg, work / "config.yaml")
    return work / "run"


def contradiction_order(ranked: list[str], records: list[dict], kinds: dict[str, str]) -> tuple[int, int]:
    """(planted contradictions ranked above the clean record they copy, planted contradictions)."""
    position = {rid: i for i, rid in enumerate(ranked)}
    by_question = {(r["instruction"], r["input"]): r["id"] for r in records if r["id"] not in kinds}
    above = total = 0
    for r in records:
        if kinds.get(r["id"]) in ("contradiction", "translation_conflict"):
            clean = by_question[(r["instruction"], r["input"])]
            total += 1
            above += position.get(r["id"], len(ranked)) < position.get(clean, len(ranked))
    return above, total


def row(name: str, ranked: list[str], records: list[dict], kinds: dict[str, str]) -> str:
    figures = precision_recall_at_k(ranked, kinds)
    above, total = contradiction_order(ranked, records, kinds)
    per_kind = " ".join(f"{figures['recall_per_kind'].get(k, float('nan')):>5.2f}" for k in PLANT_KINDS)
    return f"{name:<26} {figures['k']:>3} {figures['precision']:>5.2f} {figures['recall']:>5.2f}  {per_kind}  {above}/{total}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    kinds_header = " ".join(f"{k[:5]:>5}" for k in PLANT_KINDS)
    print(f"{'set / ranking':<26} {'k':>3} {'prec':>5} {'rec':>5}  {kinds_header}  contradiction above clean")
    for ratio in args.ratios:
        for seed in args.seeds:
            records, kinds = varied_planted_set(seed, ratio)
            valid = [validate_record(r, Where("planted", i)) for i, r in enumerate(records, start=1)]
            data_only = [s["id"] for s in score_records(valid, {}, []) if s["why"]]
            print(row(f"{ratio:.0%} seed {seed}: data only", data_only, records, kinds))
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = train(Path(tmp), write_shards(Path(tmp) / "data", records), args.steps)
                trained = [s["id"] for s in find_suspects(run_dir)]
            print(row(f"{ratio:.0%} seed {seed}: {args.steps} steps", trained, records, kinds), flush=True)


if __name__ == "__main__":
    main()
