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
