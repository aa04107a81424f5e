"""Numbers as anchors that survive translation: "12 to 16 hours", "12到16个小时" and "12～16時間" all hold
12 and 16, "八月十五" and "August 15" hold 8 and 15. A translation whose output holds other numbers than its
input says something else, however fluent it is; no dictionary or model is needed to see it.

Read: Arabic digits (with thousands separators and decimals; NFKC folds full-width digits), English
number words, ordinals and month names, and Chinese/Japanese numerals where they count something (a run
of numerals followed by a counter, or one with 十/百/千), with scale words (万, 亿, million, billion)
applied. One is left out in every form: "a", "一个" and "一样" make it too common to anchor anything.
"""

from __future__ import annotations

import re
import unicodedata

_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORDS |= {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
           "hundred": 100, "dozen": 12, "twice": 2, "thrice": 3, "half": 0.5}
_ORDINALS = {w: i for i, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())}
_ORDINALS.pop("second")  # also a unit of time: an ordinal only after "the"
_MONTHS = {m: i for i, m in enumerate("january february march april may june july august september october "
                                      "november december".split(), start=1)}
_MONTHS.pop("may")  # also a verb
_SCALES = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
_CJK_SCALES = {"万亿": 1e12, "万": 1e4, "亿": 1e8, "億": 1e8, "兆": 1e12}
_CJK_DIGITS = {"〇": 0, "零": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
               "八": 8, "九": 9}
_CJK_UNITS = {"十": 10, "百": 100, "千": 1000}
# What a bare CJK numeral counts when it is a number and not part of a word (二胡, 三角形, 七夕, 一样).
_COUNTERS = set("个個只隻条條本根颗顆块塊次回年月日号號时時小分秒度岁歳才人位名倍米公里克斤升周週天期点點つ台枚匹頭羽冊杯階歩步種种成割代世纪紀章節节")

# "9兆4600億", "1.5亿", "9.46万亿": Arabic digits with CJK scales, summed into one number first.
# Thousands separators too: "1,710万" is 17.1 million, "1億6,500万" 165 million.
_SCALED = re.compile(r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:万亿|兆|億|亿|万)|\d+(?:\.\d+)?(?:万亿|兆|億|亿|万))+"
                     r"(?:\d{1,3}(?:,\d{3})+|\d+)?")
_SCALE_PART = re.compile(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(万亿|兆|億|亿|万)")
_CJK_RUN = re.compile(f"[{''.join(_CJK_DIGITS)}{''.join(_CJK_UNITS)}]+")
_TOKEN = re.compile(r"[a-z]+|\d+(?:,\d{3})*(?:\.\d+)?|[万亿億兆]")


def _cjk_value(run: str) -> float | None:
    total, digit = 0, None
    for ch in run:
        if ch in _CJK_DIGITS:
            if digit is not None:  # 一九八六: read digit by digit
                return float("".join(str(_CJK_DIGITS[c]) for c in run)) if all(c in _CJK_DIGITS for c in run) else None
            digit = _CJK_DIGITS[ch]
        else:
            total += (1 if digit is None else digit) * _CJK_UNITS[ch]
            digit = None
    return float(total + (digit or 0))


def _scaled_value(text: str) -> float:
    return sum(float(n.replace(",", "")) * _CJK_SCALES[scale] for n, scale in _SCALE_PART.findall(text)) + float(
        _SCALE_PART.sub("", text).replace(",", "") or 0)


def numbers(text: str) -> frozenset[float]:
    """The numbers `text` states (one left out), as floats rounded to 6 significant digits."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _SCALED.sub(lambda m: f" {_scaled_value(m.group()):.0f} ", text)
    found: list[float] = []
    tokens = _TOKEN.findall(text)
    for i, token in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        scale = _SCALES.get(nxt) or _CJK_SCALES.get(nxt) or 1
        if token[0].isdigit():
            found.append(float(token.replace(",", "")) * scale)
        elif token in _WORDS:
            found.append(_WORDS[token] * scale)
        elif token in _ORDINALS:
            found.append(_ORDINALS[token])
        elif token == "second" and i and tokens[i - 1] == "the":  # "the second part", not "a second"
            found.append(2)
        elif token in _MONTHS:
            found.append(_MONTHS[token])
    for match in _CJK_RUN.finditer(text):
        run, after = match.group(), text[match.end() : match.end() + 1]
        before = text[match.start() - 1 : match.start()]
        counted = after in _COUNTERS or after in _CJK_SCALES or before == "第"  # 第九: the ninth
        if len(run) == 1 and run in _CJK_UNITS and not (counted and after != "分"):
            continue  # 十分 (enough), 千 alone; 十月 is October
        if not (counted or any(ch in _CJK_UNITS for ch in run)):
            continue
        value = _cjk_value(run)
        if value is not None:
            found.append(value * _CJK_SCALES.get(after, 1))
    return frozenset(float(f"{v:.6g}") for v in found if v != 1)


def number_mismatch(a: str, b: str) -> tuple[frozenset[float], frozenset[float]]:
    """(numbers only `a` states, numbers only `b` states), where both state some; else two empty sets: a
    side without numbers may have spelled them out in a way not read here."""
    left, right = numbers(a), numbers(b)
    if not left or not right:
        return frozenset(), frozenset()
    return left - right, right - left
