"""Checks on records that need no model: contradictions and language labels that disagree with the text."""

from __future__ import annotations

import unicodedata
from collections import defaultdict

from bonsai.data.records import Record

# Kana is Japanese-only; Han characters alone are Chinese unless kana appear; Latin letters are English.
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
_HAN = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))


def _in(ranges, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def script_language(text: str) -> str | None:
    """ja, zh or en from the script of the letters in `text`; None when there are too few to tell."""
    kana = han = latin = 0
    for ch in text:
        code = ord(ch)
        if _in(_KANA, code):
            kana += 1
        elif _in(_HAN, code):
            han += 1
        elif ch.isascii() and ch.isalpha():
            latin += 1
    letters = kana + han + latin
    if letters < 3:
        return None
    # Japanese text mixes kanji with kana; a few kana among many Han characters is still Japanese.
    if kana and kana >= 0.1 * (kana + han):
        return "ja"
    if han > latin:
        return "zh"
    return "en" if latin > 0.5 * letters else None


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def find_contradictions(records: list[Record]) -> dict[str, list[str]]:
    """Records whose instruction and input match another record's but whose output differs:
    id -> ids of the records it contradicts."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[(normalise(r.instruction), normalise(r.input))].append(r)
    out: dict[str, list[str]] = {}
    for group in groups.values():
        outputs = {normalise(r.output) for r in group}
        if len(outputs) > 1:
            for r in group:
                out[r.id] = [o.id for o in group if normalise(o.output) != normalise(r.output)]
    return out


def language_mismatches(records: list[Record]) -> list[tuple[Record, str, str, str]]:
    """(record, field, labelled, seen by script) wherever a text's script disagrees with its label:
    the output against `lang`, and a translation's input against `source_lang`."""
    found = []
    for r in records:
        if (seen := script_language(r.output)) is not None and seen != r.lang:
            found.append((r, "output", r.lang, seen))
        if r.category == "translation" and (seen := script_language(r.input)) and seen != r.source_lang:
            found.append((r, "input", r.source_lang, seen))
    return found


def find_language_mismatches(records: list[Record]) -> dict[str, str]:
    """id -> the language the output's script says, where it disagrees with the record's `lang`."""
    return {r.id: seen for r, field, _, seen in language_mismatches(records) if field == "output"}
