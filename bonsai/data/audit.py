"""`bonsai data audit PATH...`: what is wrong with a dataset before it costs a training run.

Findings and their severities:
- error: schema (a bad record), duplicate_id, contradiction (same instruction and input, other answer),
  translation_disagreement (same source text and direction, other translation), language_mismatch
  (the script of the text disagrees with `lang` or `source_lang`), too_long (past --max-length tokens);
- warning: exact_duplicate, near_duplicate (MinHash over character shingles, then verified: instruction,
  input and answer each >= 0.8 Jaccard), reverse_translation_mismatch (a->b and b->a records that do not
  round-trip), short_output (in categories that expect prose), length_outlier (tokens, robust z > 4
  within the category).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bonsai.data.records import CATEGORIES, LANGUAGES
from bonsai.robust import by_group
from bonsai.data.checks import find_contradictions, jaccard, language_mismatches
from bonsai.data.textmetrics import normalise
from bonsai.data.dataset import read_records
from bonsai.data.records import Record
from bonsai.data.textmetrics import units

SEVERITY_RANK = {"never": 3, "error": 2, "warning": 1}
PROSE_CATEGORIES = ("brainstorming", "creative", "question_to_question")
NUM_PERM, BANDS = 64, 16  # 16 bands of 4 rows: pairs above ~0.5 Jaccard become candidates
SHINGLE = 5
NEAR_DUPLICATE_JACCARD = 0.8
MERSENNE = (1 << 31) - 1


@dataclass
class Finding:
    kind: str
    severity: str
    ids: list[str]
    where: list[str]
    detail: str


@dataclass
class AuditReport:
    records: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    output_units: dict[str, list[int]] = field(default_factory=dict)
    token_lengths: list[int] = field(default_factory=list)

    def worst(self) -> str | None:
        return max((f.severity for f in self.findings), key=SEVERITY_RANK.__getitem__, default=None)

    def by_kind(self) -> Counter:
        return Counter(f.kind for f in self.findings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("output_units"), d.pop("token_lengths")
        d["summary"] = dict(self.by_kind())
        return d


def _shingles(text: str, size: int) -> set[str]:
    return {text[i : i + size] for i in range(max(1, len(text) - size + 1))}


def minhash_signatures(texts: list[str]) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(1, MERSENNE, NUM_PERM, dtype=np.int64)
    b = rng.integers(0, MERSENNE, NUM_PERM, dtype=np.int64)
    out = np.empty((len(texts), NUM_PERM), dtype=np.int64)
    for i, text in enumerate(texts):
        hashes = np.fromiter((zlib.crc32(s.encode()) & MERSENNE for s in _shingles(text, SHINGLE)), dtype=np.int64)
        # (a*x + b) mod p with a, x < 2^31 stays inside int64.
        out[i] = ((np.outer(hashes, a) + b) % MERSENNE).min(axis=0)
    return out


def near_duplicate_pairs(records: list[Record]) -> list[tuple[int, int, float]]:
    texts = [normalise(f"{r.instruction}\n{r.input}\n{r.output}") for r in records]
    signatures = minhash_signatures(texts)
    rows = NUM_PERM // BANDS
    candidates: set[tuple[int, int]] = set()
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(signatures[:, band * rows : (band + 1) * rows]):
            buckets[sig.tobytes()].append(i)
        for first, *rest in buckets.values():
            # Each member against the bucket's first, not all pairs: templated data fills buckets with
            # hundreds of look-alikes, and all pairs would be quadratic. Sixteen bands give many chances.
            candidates.update((first, other) for other in rest)
    parts: dict[int, list[set[str]]] = {}

    def shingled(i: int) -> list[set[str]]:
        if i not in parts:
            r = records[i]
            parts[i] = [_shingles(normalise(t), 3) for t in (r.instruction, r.input, r.output)]
        return parts[i]

    pairs = []
    for i, j in sorted(candidates):
        # Instruction, input and answer must each match: the same instruction with another input (a
        # classification set, say) is a new record, not a copy.
        score = min(jaccard(a, b) for a, b in zip(shingled(i), shingled(j)))
        if score >= NEAR_DUPLICATE_JACCARD:
            pairs.append((i, j, round(score, 3)))
    return pairs


def _translation_findings(records: list[Record], where: dict[str, str]) -> list[Finding]:
    findings = []
    translations = [r for r in records if r.category == "translation"]
    by_source: dict[tuple, list[Record]] = defaultdict(list)
    for r in translations:
        by_source[(r.source_lang, r.lang, normalise(r.input))].append(r)
    for (src, tgt, _), group in by_source.items():
        if len({normalise(r.output) for r in group}) > 1:
            findings.append(Finding("translation_disagreement", "error", [r.id for r in group],
                                    [where[r.id] for r in group],
                                    f"{src}->{tgt} of the same text: " + " | ".join(r.output for r in group)))
    for r in translations:
        for back in by_source.get((r.lang, r.source_lang, normalise(r.output)), []):
            if normalise(back.output) != normalise(r.input) and r.id < back.id:
                findings.append(Finding("reverse_translation_mismatch", "warning", [r.id, back.id],
                                        [where[r.id], where[back.id]],
                                        f"{r.input!r} -> {r.output!r} but back to {back.output!r}"))
    return findings


def audit(paths: list[str], tokenizer=None, max_length: int | None = None, min_output_units: int = 2) -> AuditReport:
    records, wheres, bad = [], [], []
    for path in paths:
        valid, where_from, invalid = read_records(path)
        records, wheres, bad = records + valid, wheres + where_from, bad + invalid
    where = {r.id: str(w) for r, w in zip(records, wheres)}
    report = AuditReport(records=len(records) + len(bad))
    report.counts = {c: {lang: 0 for lang in LANGUAGES} for c in CATEGORIES}
    for r in records:
        report.counts[r.category][r.lang] += 1
        report.output_units.setdefault(r.lang, []).append(len(units(r.output)))
    add = report.findings.append
    for b in bad:
        add(Finding("schema", "error", [], [str(b.where)], f"field '{b.field}': {b.reason}"))

    ids = Counter(r.id for r in records)
    for rid, n in ids.items():
        if n > 1:
            add(Finding("duplicate_id", "error", [rid], [str(w) for r, w in zip(records, wheres) if r.id == rid],
                        f"id used {n} times (ids pick the eval split and name records in reports)"))

    exact: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        exact[(normalise(r.instruction), normalise(r.input), normalise(r.output))].append(r)
    for group in exact.values():
        if len(group) > 1:
            add(Finding("exact_duplicate", "warning", [r.id for r in group], [where[r.id] for r in group],
                        f"{len(group)} copies of the same record"))
    representatives = [group[0] for group in exact.values()]
    for i, j, score in near_duplicate_pairs(representatives):
        ri, rj = representatives[i], representatives[j]
        add(Finding("near_duplicate", "warning", [ri.id, rj.id], [where[ri.id], where[rj.id]],
                    f"Jaccard >= {score} on instruction, input and answer"))

    contradictions = find_contradictions([r for r in records if r.category != "translation"])
    seen_groups = set()
    for rid, others in contradictions.items():
        group = tuple(sorted([rid, *others]))
        if group not in seen_groups:
            seen_groups.add(group)
            add(Finding("contradiction", "error", list(group), [where[i] for i in group],
                        "same instruction and input, different answers"))
    report.findings += _translation_findings(records, where)

    for r, text, labelled, seen in language_mismatches(records):
        add(Finding("language_mismatch", "error", [r.id], [where[r.id]], f"{text} labelled {labelled}, written in {seen}"))
    for r in records:
        if r.category in PROSE_CATEGORIES and len(units(r.output)) < min_output_units:
            add(Finding("short_output", "warning", [r.id], [where[r.id]],
                        f"{len(units(r.output))} word(s)/character(s) in a {r.category} answer"))

    if tokenizer is not None:
        _length_findings(records, where, tokenizer, max_length, report)
    return report


def _length_findings(records, where, tokenizer, max_length, report: AuditReport) -> None:
    from bonsai.data.template import encode_record

    lengths = [len(encode_record(tokenizer, r).input_ids) for r in records]
    report.token_lengths = lengths
    by_category: dict[str, list[float]] = defaultdict(list)
    for r, n in zip(records, lengths):
        by_category[r.category].append(math.log(n))
    robust = by_group(by_category, floor=0.05)  # of log lengths
    center = {c: m for c, (m, _) in robust.items()}
    spread = {c: s for c, (_, s) in robust.items()}
    for r, n in zip(records, lengths):
        if max_length and n > max_length:
            report.findings.append(Finding("too_long", "error", [r.id], [where[r.id]],
                                           f"{n} tokens with the template > --max-length {max_length}"))
        elif (math.log(n) - center[r.category]) / spread[r.category] > 4:
            report.findings.append(Finding("length_outlier", "warning", [r.id], [where[r.id]],
                                           f"{n} tokens, far above its category's median {math.exp(center[r.category]):.0f}"))


def summary_text(report: AuditReport, examples: int = 3) -> str:
    width = max(len(c) for c in CATEGORIES) + 2
    lines = [f"{report.records} records", f"{'category':<{width}}" + "".join(f"{lang:>6}" for lang in LANGUAGES)]
    for c in CATEGORIES:
        lines.append(f"{c:<{width}}" + "".join(f"{report.counts[c][lang]:>6}" for lang in LANGUAGES))
    if not report.findings:
        lines.append("no findings")
    for kind, n in sorted(report.by_kind().items(), key=lambda kv: (-SEVERITY_RANK[_severity(report, kv[0])], kv[0])):
        lines.append(f"{_severity(report, kind)}: {kind}: {n}")
        for f in [f for f in report.findings if f.kind == kind][:examples]:
            lines.append(f"    {', '.join(f.where[:3])}: {f.detail[:120]}")
    return "\n".join(lines)


def _severity(report: AuditReport, kind: str) -> str:
    return next(f.severity for f in report.findings if f.kind == kind)


def write_outputs(report: AuditReport, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "audit.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if report.token_lengths else 2, figsize=(16, 4.5))
    grid = np.array([[report.counts[c][lang] for lang in LANGUAGES] for c in CATEGORIES])
    axes[0].imshow(grid, cmap="Greens")
    axes[0].set(xticks=range(len(LANGUAGES)), xticklabels=LANGUAGES, yticks=range(len(CATEGORIES)),
                yticklabels=CATEGORIES, title="records per category and language")
    for (i, j), n in np.ndenumerate(grid):
        axes[0].text(j, i, str(n), ha="center", va="center", fontsize=8)
    for lang, values in sorted(report.output_units.items()):
        axes[1].hist(values, bins=30, alpha=0.5, label=lang)
    axes[1].set(title="output length (characters for ja/zh, words for en)", yscale="log")
    axes[1].legend()
    if report.token_lengths:
        axes[2].hist(report.token_lengths, bins=40)
        axes[2].set(title="tokens per record with the template")
    fig.tight_layout()
    fig.savefig(out_dir / "audit.png", dpi=100)
    plt.close(fig)
