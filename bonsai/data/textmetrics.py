"""Model-free metrics of generated text: repetition, and quality against a reference.

Units: Chinese and Japanese text has no spaces, so it is measured in characters; other text in
whitespace-separated words. The same units serve every metric, so scores compare across languages.
"""

from __future__ import annotations

import re
import unicodedata



def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form two texts are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def units(text: str) -> list[str]:
    out: list[str] = []
    word = ""
    for ch in text:
        wide = unicodedata.east_asian_width(ch) in ("W", "F")
        if ch.isspace() or wide:
            if word:
                out.append(word)
                word = ""
            if wide:
                out.append(ch)
        else:
            word += ch
    if word:
        out.append(word)
    return out


def _ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct(seq: list[str], n: int) -> float:
    """Share of n-grams that are unique (1.0: no n-gram repeats). 1.0 for text too short to have any."""
    grams = _ngrams(seq, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_ratio(seq: list[str], n: int = 3) -> float:
    """Share of n-gram occurrences that repeat an earlier one (0.0: none)."""
    return 1.0 - distinct(seq, n)


def longest_repeated_span(seq: list[str]) -> int:
    """Length (in units) of the longest run that occurs twice without overlapping itself."""
    n = len(seq)
    best = 0
    # lcs[j] = length of the common run ending at i-1 and j-1 (rolling row of the classic DP).
    prev = [0] * (n + 1)
    for i in range(1, n + 1):
        cur = [0] * (n + 1)
        for j in range(i + 1, n + 1):
            if seq[i - 1] == seq[j - 1] and prev[j - 1] < j - i:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def repetition_metrics(text: str) -> dict[str, float]:
    seq = units(text)
    return {
        "repeated_3gram_ratio": repeated_ngram_ratio(seq, 3),
        "distinct_1": distinct(seq, 1),
        "distinct_2": distinct(seq, 2),
        "longest_repeated_span": float(longest_repeated_span(seq)),
        "length": float(len(seq)),
    }


_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
# A calculation is one unit too: "6²+8²=36+64=100" in an answer to a maths question is not garbage.
_FORMULA = re.compile(r"\d+(?:[.,:]\d+)*(?:\s*[-+×÷*/=^<>]\s*\d+(?:[.,:]\d+)*)+")
ODD_MIN_CHARS = 20  # shorter answers ("3776 m", "1964") are not judged by their letters
ODD_MAX_LETTER_SHARE = 0.5
ODD_MIN_UNITS = 6  # "Yes. Yes. Yes. Yes. Yes. Yes." loops too
ODD_MIN_REPEATED_3GRAMS = 0.5


def text_oddity(text: str) -> str | None:
    """Why an answer looks broken by its text alone, or None: mostly symbols and digits (garbage), or a
    loop (most of its 3-grams repeat an earlier one). Judged without a model, so it needs no training
    signal: a garbage record the model never learns and never spikes on is still named."""
    visible = [ch for ch in text if not ch.isspace()]
    if len(visible) >= ODD_MIN_CHARS:
        # A number is one unit, as a word is: a list of dates in Chinese ("3. 电话（1876年）") is text.
        visible = list(_NUMBER.sub("0", _FORMULA.sub("0", unicodedata.normalize("NFKC", "".join(visible)))))
        share = sum(ch.isalpha() for ch in visible) / len(visible)
        if share < ODD_MAX_LETTER_SHARE:
            return f"output is {1 - share:.0%} symbols and digits"
    # List numbers ("1. Star cookies 2. Star cookies ...") make every 3-gram new: read the words alone.
    seq = [u for u in units(text) if not u.rstrip(".)、").isdigit()]
    if len(seq) >= ODD_MIN_UNITS and (ratio := repeated_ngram_ratio(seq, 3)) >= ODD_MIN_REPEATED_3GRAMS:
        return f"output repeats itself ({ratio:.0%} of its 3-grams are repeats)"
    return None


ECHO_MIN_SIMILARITY = 0.8


def _trigrams(text: str) -> set[str]:
    letters = "".join(ch for ch in normalise(text) if ch.isalnum())
    return {letters[i : i + 3] for i in range(max(1, len(letters) - 2))} if letters else set()


def echo_of(output: str, instruction: str, given: str) -> str | None:
    """"instruction" or "input" where the answer says (nearly) what the record asked or gave it, letter
    3-grams of one >= 80 % the other's (Jaccard): a question answered with itself, a rewrite that
    rewrote nothing. None otherwise."""
    said = _trigrams(output)
    for name, text in (("instruction", instruction), ("input", given)):
        asked = _trigrams(text)
        if said and asked and len(said & asked) / len(said | asked) >= ECHO_MIN_SIMILARITY:
            return name
    return None


def quality_metrics(category: str, output: str, reference: str | None) -> dict[str, float]:
    """exact/contains (the reference appears in the output) for questions with one right answer, chrF for
    translation. Other categories (creative, brainstorming, ...) have no single right answer."""
    if not reference:
        return {}
    if category in ("closed_qa", "classification", "open_qa"):
        out, ref = normalise(output), normalise(reference)
        return {"exact": float(out == ref), "contains": float(ref in out)}
    if category == "translation":
        from sacrebleu import sentence_chrf

        return {"chrf": sentence_chrf(output, [reference]).score}
    return {}
