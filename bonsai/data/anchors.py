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
_TOKEN = re.compile(r"[a-z]+|\d+(?:,\d{3})*(?:\.\d+)?")
# Japanese 割 counts tenths ("2割" is 20 %); Chinese writes a decade of a century as "19世纪60年代" (the 1860s).
_TENTHS = re.compile(r"(\d+(?:\.\d+)?)割")
_CENTURY_DECADE = re.compile(r"(\d{1,2})世[纪紀](\d)0年代")


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
    text = _TENTHS.sub(lambda m: f" {float(m.group(1)) * 10:g} ", text)
    text = _CENTURY_DECADE.sub(lambda m: f" {(int(m.group(1)) - 1) * 100 + int(m.group(2)) * 10} ", text)
    found: list[float] = []
    tokens = _TOKEN.findall(text)
    for i, token in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        scale = _SCALES.get(nxt) or 1  # a CJK scale counts only next to its digits (_SCALED, _CJK_RUN)
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


# Forms that imply a number without stating one: a numeral inside a word (三系 is the "three-line"
# system), "pairs" (2 each). They excuse the other side's number; they state none of their own.
_PAIRS = re.compile(r"\b(?:pairs?|couples?)\b")


def implied_numbers(text: str) -> frozenset[float]:
    text = unicodedata.normalize("NFKC", text).casefold()
    found = {v for run in _CJK_RUN.findall(text) if (v := _cjk_value(run)) is not None}
    if _PAIRS.search(text):
        found.add(2.0)
    return frozenset(float(f"{v:.6g}") for v in found)


def number_mismatch(a: str, b: str) -> tuple[frozenset[float], frozenset[float]]:
    """(numbers only `a` states, numbers only `b` states), where both state some; else two empty sets: a
    side without numbers may have spelled them out in a way not read here. A number the other side
    implies (implied_numbers) is not one only this side states."""
    left, right = numbers(a), numbers(b)
    if not left or not right:
        return frozenset(), frozenset()
    return left - right - implied_numbers(b), right - left - implied_numbers(a)


# Units a translation must keep: "eight minutes" is not "8秒", "828 metres" not "828英尺". Each unit as
# English, Japanese and Chinese write it, longest first within a language. Left out where the word is
# ambiguous next to a number: 年 and 日 (dates), 時 (o'clock), 度 (degrees of what), キロ (km or kg).
_UNITS = {
    "s": ("seconds", "second", "secs", "sec", "秒钟", "秒鐘", "秒間", "秒"),
    "min": ("minutes", "minute", "mins", "min", "分钟", "分鐘", "分間", "分"),
    "h": ("hours", "hour", "hrs", "hr", "小时", "小時", "時間", "钟头"),
    "week": ("weeks", "week", "週間", "星期", "周"),
    "month": ("months", "month", "个月", "個月", "か月", "ヶ月", "カ月"),
    "km": ("kilometres", "kilometers", "kilometre", "kilometer", "km", "公里", "千米", "キロメートル"),
    "m": ("metres", "meters", "metre", "meter", "m", "メートル", "米"),
    "cm": ("centimetres", "centimeters", "centimetre", "centimeter", "cm", "厘米", "センチメートル", "センチ"),
    "mm": ("millimetres", "millimeters", "millimetre", "millimeter", "mm", "毫米", "ミリメートル", "ミリ"),
    "ft": ("feet", "foot", "ft", "英尺", "フィート"),
    "mi": ("miles", "mile", "英里", "マイル"),
    "in": ("inches", "inch", "英寸", "インチ"),
    "kg": ("kilograms", "kilogram", "kg", "公斤", "千克", "キログラム"),
    "g": ("grams", "gram", "g", "克", "グラム"),
    "t": ("tonnes", "tonne", "tons", "ton", "吨", "噸", "トン"),
    "lb": ("pounds", "pound", "lbs", "lb", "磅", "ポンド"),
    "°C": ("°c", "℃", "degrees celsius", "摂氏"),
    "°F": ("°f", "℉", "degrees fahrenheit", "华氏", "華氏"),
    "%": ("%", "percent", "per cent", "パーセント"),
}
_UNIT_OF = {word: unit for unit, words in _UNITS.items() for word in words}
_AMOUNT = (r"\d+(?:,\d{3})*(?:\.\d+)?|" + "|".join(sorted(_WORDS, key=len, reverse=True))
           + f"|[{''.join(_CJK_DIGITS)}{''.join(_CJK_UNITS)}]+")
_QUANTITY = re.compile(rf"(?<![a-z0-9.,])({_AMOUNT})\s?(" + "|".join(
    re.escape(w) for w in sorted(_UNIT_OF, key=len, reverse=True)) + r")(?![a-z])")


def _amount(token: str) -> float | None:
    if token[0].isdigit():
        return float(token.replace(",", ""))
    return float(_WORDS[token]) if token in _WORDS else _cjk_value(token)


def quantities(text: str) -> dict[float, frozenset[str]]:
    """Each number `text` states with a unit -> the units it is stated in: "about 8 minutes" -> {8: {min}}."""
    text = unicodedata.normalize("NFKC", text).casefold()
    found: dict[float, set[str]] = {}
    for amount, unit in _QUANTITY.findall(text):
        value = _amount(amount)
        if value is not None:
            found.setdefault(float(f"{value:.6g}"), set()).add(_UNIT_OF[unit])
    return {value: frozenset(units) for value, units in found.items()}


def unit_mismatch(a: str, b: str) -> list[tuple[float, frozenset[str], frozenset[str]]]:
    """(number, units in `a`, units in `b`) for each number both state with units that share none."""
    left, right = quantities(a), quantities(b)
    return [(v, left[v], right[v]) for v in sorted(left.keys() & right.keys()) if not left[v] & right[v]]
