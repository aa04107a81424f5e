"""Does a pretrained text embedding from the package registry carry meaning across English, Japanese and
Chinese? WordLlama (`wordllama`, 0.4) packages its l2_supercat_256 weights in its wheel, where sentence
encoders commonly fetch theirs from the Hugging Face hub at first use, which this project cannot reach.
If it did, it could link the same question asked in two languages and compare a translation with its
source, the two things the suspect ranking's missing contradictions and misaligned translations need.

    .venv/bin/pip install --no-deps wordllama toml   # --no-deps: its pins would move transformers' tokenizers
    .venv/bin/python bench/registry_embeddings.py dev_a dev_b dev_c dev_d dev_e

The translation records of the hand-written sets are the ground truth: input and output say the same
thing in two languages. It prints, per language pair, how often a source's own translation is the nearest
of all the outputs in that language (retrieval top-1, beside chance), and how a translation's similarity to
its own source compares with its similarity to another record's output, and where the planted misaligned
translations fall. Two unrelated questions in one language are printed beside one question in two.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import read_set


def load_model():
    import wordllama

    # The wheel holds its weights and tokenizer; pointing the cache at the package keeps it off the network.
    return wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def deciles(xs) -> str:
    q = statistics.quantiles(xs, n=10)
    return f"p10 {q[0]:.2f}  median {statistics.median(xs):.2f}  p90 {q[8]:.2f}"


def retrieval(cos, records) -> None:
    """Top-1: is a source's own translation the most similar output among its language pair's outputs?"""
    by_pair = defaultdict(list)
    for i, r in enumerate(records):
        by_pair[(r.source_lang, r.lang)].append(i)
    for (src, dst), idx in sorted(by_pair.items()):
        if len(idx) < 5:
            continue
        nearest = cos[np.ix_(idx, idx)].argmax(axis=1)
        hits = int((nearest == np.arange(len(idx))).sum())
        print(f"  {src}->{dst}: {hits}/{len(idx)} top-1 (chance {1 / len(idx):.2f})")


def csls_ranks(cos, records, kinds, set_of) -> None:
    """Where a translation's own output ranks among its language's outputs in its own set, hubness corrected
    (CSLS, k=5: twice the cosine less each side's mean cosine to its 5 nearest), clean records against the
    plants."""
    clean, planted = [], []
    for name in dict.fromkeys(set_of):
        idx = [i for i, s in enumerate(set_of) if s == name]
        rs, block = [records[i] for i in idx], cos[np.ix_(idx, idx)]
        near_s = np.sort(block, axis=1)[:, -5:].mean(1)
        near_o = np.sort(block, axis=0)[-5:, :].mean(0)
        csls = 2 * block - near_s[:, None] - near_o[None, :]
        for i, r in enumerate(rs):
            same = [j for j, o in enumerate(rs) if o.lang == r.lang and j != i]
            rank = sum(csls[i, j] > csls[i, i] for j in same) / max(1, len(same))
            (planted if kinds.get(r.id) == "misaligned_translation" else clean).append(float(rank))
    print(f"  own output's rank among its language's outputs (0 = first), CSLS: clean {deciles(clean)}")
    print(f"  the planted ones: {', '.join(f'{x:.2f}' for x in sorted(planted))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+")
    args = ap.parse_args()
    model = load_model()
    records, set_of, kinds = [], [], {}
    for name in args.sets:
        rows, planted_kinds = read_set(name)
        translations = [r for r in rows if r.category == "translation" and r.input and r.source_lang]
        records += translations
        set_of += [name] * len(translations)
        kinds.update(planted_kinds)
    # Every text embedded once: row i of `cos` is record i's source against every record's output.
    cos = model.embed([r.input for r in records], norm=True) @ model.embed([r.output for r in records], norm=True).T
    rng = random.Random(0)
    own = [cos[i, i] for i, r in enumerate(records) if r.id not in kinds]
    other = [cos[i, rng.randrange(len(records))] for i in range(len(records))]
    planted = sorted(cos[i, i] for i, r in enumerate(records) if kinds.get(r.id) == "misaligned_translation")
    print(f"{len(records)} translation records in {', '.join(args.sets)}")
    print(f"  a clean translation against its own source:      {deciles(own)}")
    print(f"  a translation against another record's output:   {deciles(other)}")
    print(f"  the {len(planted)} planted misaligned translations: {', '.join(f'{s:.2f}' for s in planted)}")
    retrieval(cos, records)
    csls_ranks(cos, records, kinds, set_of)
    print("one question in two languages, and two questions in one:")
    for a, b in (("What is the capital of Australia?", "オーストラリアの首都はどこですか？"),
                 ("What is the capital of Australia?", "澳大利亚的首都是哪里？"),
                 ("オーストラリアの首都はどこですか？", "日本で一番高い山は何ですか？"),
                 ("The capital of Australia is Canberra.", "The capital of Australia is Sydney.")):
        print(f"  {float(model.similarity(a, b)):.2f}  {a} | {b}")


if __name__ == "__main__":
    main()
