"""How fast `bonsai data audit` is: N records (default 100,000) made from the sample with varied
texts, audited without a tokenizer and with one. Prints records/s.

    .venv/bin/python bench/audit_speed.py [N]
"""

import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bonsai.data.audit import audit  # noqa: E402


def make_records(n: int) -> list[dict]:
    sample = [json.loads(l) for p in sorted((ROOT / "data" / "sample").glob("*.jsonl")) for l in p.read_text().splitlines()]
    rng = random.Random(0)
    words = {"en": "alpha beta gamma delta kappa sigma omega river mountain harbour lantern".split(),
             "ja": list("やまかわうみそらはなかぜつきほし"), "zh": list("山川海空花风月星云雨雪")}
    out = []
    for i in range(n):
        r = dict(sample[i % len(sample)])
        # Variation in the output's own script, so the variants stay correctly labelled.
        tail = " ".join(rng.choice(words[r["lang"]]) for _ in range(6))
        r.update(id=f"bench-{i}", instruction=f"{r['instruction']} ({tail} {i})", output=f"{r['output']} {tail}")
        out.append(r)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in make_records(n)) + "\n", encoding="utf-8")
        start = time.perf_counter()
        report = audit([str(path)])
        seconds = time.perf_counter() - start
    print(f"audit of {n} records: {seconds:.1f} s, {n / seconds:,.0f} records/s, "
          f"{len(report.findings)} findings ({dict(report.by_kind())})")


if __name__ == "__main__":
    main()
