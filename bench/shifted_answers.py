"""How often the report's `answers_other` check (bonsai.data.checks.misplaced_answers) names an answer
moved under another question, the way a join off by one row or a paste into the wrong cell moves it,
on the development sets of bench/sets/ (the held-out ones are left alone: they are scored once, by
bench/suspects.py).

    .venv/bin/python bench/shifted_answers.py            # dev_a ... dev_e, 5 seeds, 6 answers each
    .venv/bin/python bench/shifted_answers.py dev_e --seeds 20

For each set and seed it takes 6 clean QA records (open_qa, closed_qa) at random and gives each the answer
of another clean QA record in its language, then prints how many of the 6 the check names, and how many
other clean records it names (its cost). No training: the check reads the records alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

from common import read_set

from bonsai.data.checks import MISPLACED_CATEGORIES, misplaced_answers

SHIFTED = 6


def shift_answers(records: list, kinds: dict[str, str], seed: int) -> set[str]:
    """Records with another clean QA record's answer, in place in `records`; their ids."""
    rng = random.Random(seed)
    qa = [r for r in records if r.category in MISPLACED_CATEGORIES and r.id not in kinds]
    moved = {}
    for r in rng.sample(qa, SHIFTED):
        donor = rng.choice([o for o in qa if o.lang == r.lang and o.id != r.id])
        moved[r.id] = donor.output
    records[:] = [dataclasses.replace(r, output=moved[r.id]) if r.id in moved else r for r in records]
    return set(moved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", default=["dev_a", "dev_b", "dev_c", "dev_d", "dev_e"])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'set':8} {'shifted found':>14} {'clean named':>12}")
    total = [0, 0, 0]
    for name in args.sets:
        found = shifted = clean = 0
        for seed in range(args.seeds):
            records, kinds = read_set(name)
            moved = shift_answers(records, kinds, seed)
            named = misplaced_answers(records)
            found += len(moved & named.keys())
            shifted += len(moved)
            clean += len(named.keys() - moved - kinds.keys())
        print(f"{name:8} {f'{found}/{shifted}':>14} {clean:>12}")
        total = [total[0] + found, total[1] + shifted, total[2] + clean]
    print(f"{'all':8} {f'{total[0]}/{total[1]}':>14} {total[2]:>12}")


if __name__ == "__main__":
    main()
