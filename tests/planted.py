"""A dataset with planted bad records among the clean sample, for the instability tests and reports."""

import random

from conftest import sample_records


def planted_records(seed: int = 0) -> tuple[list[dict], set[str]]:
    """Clean sample records plus 15 planted bad ones; returns (records, planted ids).
    Contradictions copy a clean instruction and give another answer; garbage outputs are random
    symbols; wrong-language records are labelled English but answer in Chinese."""
    rng = random.Random(seed)
    clean = sample_records()
    by_id = {r["id"]: r for r in clean}
    planted = []
    for i, (rid, wrong) in enumerate([("capital-01-en", "Berlin"), ("capital-03-en", "Oslo"), ("capital-05-en", "Lima"),
                                      ("capital-08-en", "Cairo"), ("capital-12-en", "Quito")]):
        original = by_id[rid]
        country = original["instruction"].removeprefix("What is the capital of ").rstrip("?")
        planted.append({**original, "id": f"planted-contradiction-{i}", "output": f"The capital of {country} is {wrong}."})
    symbols = "!#$%&*+-/<=>?@^~|0123456789qxzjkvw"
    for i in range(5):
        garbage = "".join(rng.choice(symbols) for _ in range(90))
        planted.append({"id": f"planted-garbage-{i}", "instruction": f"Describe item {i} of the inventory.",
                        "input": "", "output": garbage, "category": "open_qa", "lang": "en"})
    zh_outputs = [r["output"] for r in clean if r["lang"] == "zh" and r["category"] == "creative"]
    for i, topic in enumerate(["the winter moon", "a quiet harbour", "an old bicycle", "spring rain", "a paper lantern"]):
        planted.append({"id": f"planted-wronglang-{i}", "instruction": f"Write a short poem about {topic}.", "input": "",
                        "output": zh_outputs[i % len(zh_outputs)], "category": "creative", "lang": "en"})
    records = clean + planted
    rng.shuffle(records)
    return records, {r["id"] for r in planted}


PLANT_KINDS = ("contradiction", "translation_conflict", "garbage", "wrong_language", "looping")


def varied_planted_set(seed: int, ratio: float) -> tuple[list[dict], dict[str, str]]:
    """Clean sample records plus planted ones of five kinds, about `ratio` of the clean count (at least
    one of each kind); returns (records, planted id -> kind). Unlike planted_records, which record is
    copied and what replaces its answer is drawn from the seed:
    - contradiction: a clean question (open_qa, closed_qa) answered with another question's answer of
      the same category and language (a wrong fact);
    - translation_conflict: a clean translation's instruction and input with another translation into
      the same language as output;
    - garbage: symbols and digits as the answer to a clean instruction reworded;
    - wrong_language: a clean record's answer replaced by one in another language, the label kept;
    - looping: a clean answer's first words repeated over and over."""
    rng = random.Random(f"planted:{seed}")
    clean = sample_records()
    per_kind = max(1, round(ratio * len(clean) / len(PLANT_KINDS)))
    pools = {
        "contradiction": [r for r in clean if r["category"] in ("open_qa", "closed_qa")],
        "translation_conflict": [r for r in clean if r["category"] == "translation"],
    }
    planted, kinds = [], {}

    def plant(kind: str, i: int, record: dict) -> None:
        record = {**record, "id": f"x{seed}-{kind}-{i}"}
        planted.append(record)
        kinds[record["id"]] = kind

    for kind in PLANT_KINDS:
        for i, original in enumerate(rng.sample(pools.get(kind, clean), per_kind)):
            same = [r for r in clean if r["lang"] == original["lang"] and r["category"] == original["category"]
                    and r["output"] != original["output"]]
            if kind in ("contradiction", "translation_conflict"):
                plant(kind, i, {**original, "output": rng.choice(same)["output"]})
            elif kind == "garbage":
                symbols = "!#$%&*+-/<=>?@^~|0123456789"
                plant(kind, i, {**original, "instruction": f"{original['instruction']} ({i + 1})",
                                "output": "".join(rng.choice(symbols) for _ in range(rng.randint(30, 90)))})
            elif kind == "wrong_language":
                other = [r for r in clean if r["lang"] != original["lang"] and r["category"] == original["category"]
                         and sum(ch.isalpha() for ch in r["output"]) >= 6]  # "1707年。" is in no language
                plant(kind, i, {**original, "instruction": f"{original['instruction']} ({i + 1})",
                                "output": rng.choice(other)["output"]})
            else:
                words = original["output"].split() if original["lang"] == "en" else list(original["output"])
                phrase = ("" if original["lang"] != "en" else " ").join(words[:4])
                plant(kind, i, {**original, "instruction": f"{original['instruction']} ({i + 1})",
                                "output": " ".join([phrase] * rng.randint(6, 10))})
    records = clean + planted
    rng.shuffle(records)
    return records, kinds


def precision_recall_at_k(ranked_ids: list[str], kinds: dict[str, str]) -> dict:
    """Precision and recall over the top k = number planted, overall and recall per kind; and, for each
    planted contradiction, whether the clean record it contradicts ranks below it."""
    k = len(kinds)
    top = set(ranked_ids[:k])
    hits = top & set(kinds)
    per_kind = {kind: sum(1 for i in hits if kinds[i] == kind) / max(1, sum(1 for v in kinds.values() if v == kind))
                for kind in sorted(set(kinds.values()))}
    return {"k": k, "precision": len(hits) / k, "recall": len(hits) / k, "recall_per_kind": per_kind}
