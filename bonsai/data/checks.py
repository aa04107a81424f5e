"""Checks on records that need no model: contradictions and language labels that disagree with the text."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from functools import cache
from itertools import pairwise

from bonsai.data.anchors import number_mismatch, numbers, unit_mismatch
from bonsai.data.records import Record
from bonsai.data.textmetrics import normalise, units

# Kana is Japanese-only; Latin letters are English (unless the language identifier is sure of another
# Latin-script language); Han characters alone are told apart by the forms only one of the two writes.
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
_HAN = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))
# lingua on a Latin-script text: trusted only on a sentence of some length (on the sample, a 6-word
# English answer naming a foreign place scored 0.59 Portuguese; on its 69 English texts of 8+ words
# English ranks first, at >= 0.25) and when another language clearly leads.
LATIN_MIN_WORDS = 8
LATIN_MIN_CONFIDENCE = 0.5
LATIN_MAX_ENGLISH = 0.1
HAN_SENTENCE = 8
HAN_RUN = 5  # the longest run of Han characters (no kana, no punctuation between) a sentence holds
# An answer "is" another's when it holds that answer's distinctive part and most of its words or characters
# (common CJK characters alone are everywhere).
BORROWED_MIN_JACCARD = 0.5


def _in(ranges, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


@cache
def _encodable(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def han_language(text: str) -> str | None:
    """ja or zh from Han characters alone, by the forms only one language writes: Japanese shinjitai and
    kokuji (駅 図 気 庁 働: in JIS X 0208, in neither GB 2312 nor Big5) against Chinese simplified or
    traditional forms Japanese does not use (这 图 车 臺: in GB 2312 or Big5, not in JIS). None when the
    characters are common to both (富士山, 北京大学): a language identifier calls those Chinese, which
    would flag every kanji-only Japanese answer."""
    ja = zh = 0
    for ch in text:
        if not _in(_HAN, ord(ch)):
            continue
        in_jis = _encodable(ch, "euc_jp")
        if in_jis and not _encodable(ch, "gb2312") and not _encodable(ch, "big5"):
            ja += 1
        elif not in_jis and (_encodable(ch, "gb2312") or _encodable(ch, "big5")):
            zh += 1
    return "ja" if ja > zh else "zh" if zh > ja else None


def _longest_han_run(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if _in(_HAN, ord(ch)) else 0
        longest = max(longest, run)
    return longest


def _letters(text: str) -> tuple[int, int, int]:
    kana = han = latin = 0
    for ch in text:
        code = ord(ch)
        if _in(_KANA, code):
            kana += 1
        elif _in(_HAN, code):
            han += 1
        elif ch.isascii() and ch.isalpha():
            latin += 1
    return kana, han, latin


def written_in(text: str) -> set[str] | None:
    """The languages `text` may be written in, as far as its letters tell: {"ja"}, {"zh"}, {"ja", "zh"}
    (Han characters common to both), {"en"}, or another Latin-script language lingua is sure of
    ({"fr"}, ...). None when there are too few letters to tell."""
    kana, han, latin = _letters(text)
    letters = kana + han + latin
    if letters < 3:
        return None
    # Japanese text mixes kanji with kana; a few kana among many Han characters is still Japanese.
    if kana and kana >= 0.1 * (kana + han):
        return {"ja"}
    if han > latin:
        if told := han_language(text):
            return {told}
        # No telling form: a short run of kanji is a Japanese name or term as often as Chinese, but a
        # Japanese sentence of HAN_SENTENCE characters without one kana is rare.
        # Labels ("A：肯定的\nB：否定的") add up to many characters in short runs: the longest run counts.
        return {"zh"} if han >= HAN_SENTENCE and _longest_han_run(text) >= HAN_RUN else {"ja", "zh"}
    if latin > 0.5 * letters:
        return {_latin_language(text)}
    return None


def script_language(text: str) -> str | None:
    """One guess, for where a label must be made up (`bonsai data convert`, `bonsai generate`): ja, zh
    (Han characters common to both count as Chinese) or en; None when there are too few letters."""
    seen = written_in(text)
    if not seen:
        return None
    return "zh" if seen == {"ja", "zh"} else next(iter(seen))


@cache
def _latin_detector():
    from lingua import Language, LanguageDetectorBuilder

    latin = [Language.ENGLISH, Language.FRENCH, Language.GERMAN, Language.SPANISH, Language.ITALIAN,
             Language.PORTUGUESE, Language.DUTCH, Language.INDONESIAN]
    return LanguageDetectorBuilder.from_languages(*latin).build()


def _latin_language(text: str) -> str:
    """en, unless the text is long enough to judge and lingua is sure it is another language."""
    if len(text.split()) < LATIN_MIN_WORDS:
        return "en"
    confidence = {c.language.iso_code_639_1.name.lower(): c.value
                  for c in _latin_detector().compute_language_confidence_values(text)}
    best = max(confidence, key=confidence.get)
    sure = confidence[best] >= LATIN_MIN_CONFIDENCE and confidence["en"] <= LATIN_MAX_ENGLISH
    return best if best != "en" and sure else "en"


def question_of(r: Record) -> tuple[str, str]:
    """What a record asks: its instruction and input, normalised."""
    return normalise(r.instruction), normalise(r.input)


def _by_question(records: list[Record]) -> list[list[Record]]:
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[question_of(r)].append(r)
    return list(groups.values())


def find_contradictions(records: list[Record]) -> dict[str, list[str]]:
    """Records whose instruction and input match another record's but whose output differs:
    id -> ids of the records it contradicts."""
    out: dict[str, list[str]] = {}
    for group in _by_question(records):
        outputs = {normalise(r.output) for r in group}
        if len(outputs) > 1:
            for r in group:
                out[r.id] = [o.id for o in group if normalise(o.output) != normalise(r.output)]
    return out


def outvoted(records: list[Record]) -> set[str]:
    """Of contradicting records, those whose answer loses a vote: where one answer to an instruction is
    given by more records than any other, the records giving another. A 1-to-1 contradiction has no
    majority and leaves both sides in."""
    out = set()
    for group in _by_question(records):
        votes = Counter(normalise(r.output) for r in group)
        if len(votes) < 2:
            continue
        (best, top), (_, second) = votes.most_common(2)
        if top > second:
            out |= {r.id for r in group if normalise(r.output) != best}
    return out


def _content(text: str) -> set[str]:
    """The words (Latin) and characters (CJK) of a text, without punctuation: what an answer says."""
    return {u for u in units(normalise(text)) if any(ch.isalnum() for ch in u)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def borrowed_answers(records: list[Record], contradictions: dict[str, list[str]]) -> dict[str, str]:
    """Of contradicting records, those whose answer says what another question's answer says: the part
    of the answer not shared with the records it contradicts ("Berlin" against "Paris") is found in the
    answer of a record with another instruction. A wrong fact is often a right one moved to the wrong
    question (the capital of another country, the year of another event). id -> that record's id."""
    if not contradictions:
        return {}
    content: dict[str, set[str]] = {r.id: _content(r.output) for r in records}
    question = {r.id: question_of(r) for r in records}
    # A translation restates a fact in another language, it answers no other question: an answer that
    # equals a translation's output is corroborated by it, not borrowed (a translation that equals another
    # translation's output may still have taken it from the wrong source).
    translations = {r.id for r in records if r.category == "translation"}
    holders: dict[str, set[str]] = defaultdict(set)  # word or character -> ids of the answers that hold it
    for rid, said in content.items():
        for unit in said:
            holders[unit].add(rid)
    found = {}
    for rid, others in contradictions.items():
        own = content[rid] - set().union(*(content[o] for o in others))
        if not own:
            continue
        candidates = set.intersection(*(holders[u] for u in own))
        if rid not in translations:
            candidates -= translations
        source = next((c for c in sorted(candidates) if question[c] != question[rid]
                       and jaccard(content[rid], content[c]) >= BORROWED_MIN_JACCARD), None)
        if source:
            found[rid] = source
    return found


def ungrounded(records: list[Record], contradictions: dict[str, list[str]]) -> dict[str, str]:
    """Of contradicting records that answer from a context (an input; translations aside, whose input
    is the source text), those whose answer is not in it while the answer of a record they contradict
    is: what it says beyond the other answers ("2時間半" against "1707年") appears nowhere in the input
    the question gives. id -> the grounded record's id."""
    by_id = {r.id: r for r in records}

    def grounded(rid: str, others: list[str]) -> bool:
        record = by_id[rid]
        own = _content(record.output) - set().union(*(_content(by_id[o].output) for o in others))
        return bool(own) and own <= _content(record.input)

    found = {}
    for rid, others in contradictions.items():
        record = by_id[rid]
        if not record.input.strip() or record.category == "translation" or grounded(rid, others):
            continue
        source = next((o for o in sorted(others) if grounded(o, contradictions.get(o, [rid]))), None)
        if source:
            found[rid] = source
    return found


def translation_support(records: list[Record]) -> set[str]:
    """Translations the rest of the data agrees with: a record translating I into O where other
    translation records link I and O, directly (O translated back into I) or through a third language
    (I and O both translated to or from one other text). A record's own instruction-and-input group is
    left out, so of two translations of I that disagree, only one the data backs counts."""
    edges: dict[str, list[tuple[str, tuple[str, str]]]] = defaultdict(list)
    translations = [r for r in records if r.category == "translation"]
    for r in translations:
        a, b, group = normalise(r.input), normalise(r.output), question_of(r)
        edges[a].append((b, group))
        edges[b].append((a, group))

    def neighbours(text: str, skip: tuple[str, str]) -> set[str]:
        return {other for other, group in edges[text] if group != skip}

    supported = set()
    for r in translations:
        a, b, group = normalise(r.input), normalise(r.output), question_of(r)
        near = neighbours(a, group)
        if b in near or near & neighbours(b, group):
            supported.add(r.id)
    return supported


def language_mismatches(records: list[Record]) -> list[tuple[Record, str, str, str]]:
    """(record, field, labelled, written in) wherever a text's letters disagree with its label:
    the output against `lang`, and a translation's input against `source_lang`."""
    found = []
    for r in records:
        if (seen := written_in(r.output)) and r.lang not in seen:
            found.append((r, "output", r.lang, "/".join(sorted(seen))))
        if r.category == "translation" and (seen := written_in(r.input)) and r.source_lang not in seen:
            found.append((r, "input", r.source_lang, "/".join(sorted(seen))))
    return found


def find_language_mismatches(records: list[Record]) -> dict[str, str]:
    """id -> the language the output's script says, where it disagrees with the record's `lang`."""
    return {r.id: seen for r, field, _, seen in language_mismatches(records) if field == "output"}


SENTENCE_END = re.compile(r"[。．.!?！？\n]")
CORROBORATING_CHARS = 6  # shorter sentences ("Yes.", "两根。") are said everywhere


def sentences(text: str) -> set[str]:
    return {s for s in (part.strip() for part in SENTENCE_END.split(normalise(text))) if len(s) >= CORROBORATING_CHARS}


def corroborations(records: list[Record]) -> dict[str, list[str]]:
    """id -> the other records whose input or answer states a sentence of this record's answer: a QA answer
    that a translation record translates from or into, a fact two questions share. Support, not
    contradiction: a record the rest of the data repeats is less likely wrong. Indexed by sentence, O(n)."""
    stating: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for s in sentences(r.output) | sentences(r.input):
            stating[s].add(r.id)
    found = {}
    for r in records:
        others = set().union(*(stating[s] for s in sentences(r.output))) - {r.id} if r.output else set()
        if others:
            found[r.id] = sorted(others)
    return found


def translation_number_mismatches(records: list[Record]) -> dict[str, str]:
    """id -> what differs, for translations whose output states other numbers than their input, or one
    number in another unit (bonsai.data.anchors): "12 to 16 hours" rendered as "8時間", "eight minutes" as
    "8秒": a fluent, wrong translation."""
    found = {}
    show = lambda values: ", ".join(f"{v:g}" for v in sorted(values)) or "none"  # noqa: E731
    for r in records:
        if r.category != "translation":
            continue
        only_input, only_output = number_mismatch(r.input, r.output)
        if only_input or only_output:
            found[r.id] = f"translation changes the numbers: input {show(only_input)}, output {show(only_output)}"
        elif units := unit_mismatch(r.input, r.output):
            value, said, wrote = units[0]
            found[r.id] = f"translation changes the unit: input {value:g} {'/'.join(sorted(said))}, " \
                          f"output {value:g} {'/'.join(sorted(wrote))}"
    return found


CATEGORY_MIN_RECORDS = 10  # fewer records say too little about what their category expects


def lacking_what_the_category_has(records: list[Record], has, usual: float) -> dict[str, tuple[int, int]]:
    """id -> (records of its category that have it, records of its category), for records without
    `has(record)` in a category (of at least CATEGORY_MIN_RECORDS) where at least `usual` of the records
    have it. What a category expects is read from the data, not from a list."""
    with_it: Counter = Counter()
    total: Counter = Counter()
    for r in records:
        total[r.category] += 1
        with_it[r.category] += bool(has(r))
    return {r.id: (with_it[r.category], total[r.category]) for r in records
            if not has(r) and total[r.category] >= CATEGORY_MIN_RECORDS and with_it[r.category] >= usual * total[r.category]}


INPUT_USUAL = 0.9  # a category whose records come with an input this often expects one


def missing_inputs(records: list[Record]) -> dict[str, str]:
    """id -> why, for records without an input in a category whose records nearly all have one: a
    question about "the passage" with no passage, a translation of nothing."""
    lacking = lacking_what_the_category_has(records, lambda r: r.input.strip(), INPUT_USUAL)
    category = {r.id: r.category for r in records}
    return {i: f"no input, where {have} of {n} {category[i]} records have one" for i, (have, n) in lacking.items()}


# What a finished sentence ends with, quotes and brackets included ("…だ。」", "…(212°F).").
SENTENCE_FINAL = frozenset("。．.!?！？」』)）\"”'’…")
ENDING_USUAL = 0.9  # a category whose answers end a sentence this often expects every answer to


_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)、．]|[-*•・])\s*", re.MULTILINE)
_INNER_SENTENCE_END = re.compile(r"[。！？!?]|(?<!\b\d)\.(?=\s)")  # not the "2." of "1. Apples 2. Pears"
_LINE_END = frozenset("。．.!?！？…")  # a line that ends a sentence; a bracket or quote alone does not
SIGN_OFF_CHARS = 12  # "Alex", "阿明", "Love, Mum": a letter's last line, not a cut-off sentence


def _lines(text: str) -> list[tuple[bool, str]]:
    """(begins with a list marker, the line without it), blank lines dropped."""
    return [(bool(_LIST_MARKER.match(line)), _LIST_MARKER.sub("", line).strip().rstrip("」』\"”’)）"))
            for line in text.strip().splitlines() if line.strip()]


def cut_off(text: str) -> bool:
    """An answer whose own sentences end but whose last one does not: "…散射，因此", a list whose items
    end with a full stop and whose last item stops at "when", a story cut off at "…笑って". Over several
    lines the last is judged against the others (list items that never end a sentence are a plain
    list, whatever their inner sentences do); a short last line that is no list item is a letter's
    sign-off ("Alex", "祝好！\n阿明") and ends without a full stop by custom."""
    if not text.strip() or text.strip()[-1] in SENTENCE_FINAL:
        return False
    lines = _lines(text)
    if len(lines) == 1:
        return bool(_INNER_SENTENCE_END.search(lines[0][1]))
    item, last = lines[-1]
    if not item and len(last) <= SIGN_OFF_CHARS and not _INNER_SENTENCE_END.search(last):
        return False
    return sum(line[-1:] in _LINE_END for _, line in lines[:-1]) > (len(lines) - 1) / 2


def ends_as_written(text: str) -> bool:
    """The answer ends a sentence, or is lines of which none does (a list, a poem, labels), or is such a
    list after a sentence that introduces it ("次の四つです。\n1. …\n4. …") whose last item is not cut
    short (half the median length of the others: "1. 太平洋\n2. 大西洋\n3. インド洋\n4. 南" is)."""
    if text.strip()[-1:] in SENTENCE_FINAL:
        return True
    lines = _lines(text)
    items = [line for item, line in lines if item]
    if lines and lines[-1][0] and len(items) > 1:
        others = sorted(len(line) for line in items[:-1])
        return not any(line[-1:] in _LINE_END for line in items) and len(items[-1]) * 2 >= others[len(others) // 2]
    return len(lines) > 1 and not any(line[-1:] in _LINE_END for _, line in lines)


def unfinished_endings(records: list[Record]) -> dict[str, str]:
    """id -> why, for answers that stop mid-sentence: where their own sentences end but the last does not
    (any category), or in a category whose answers nearly all end a sentence: "…因此", "…lose their".
    Lists, labels and poems, which end without punctuation, make their category's rate low."""
    lacking = lacking_what_the_category_has(records, lambda r: ends_as_written(r.output), ENDING_USUAL)
    category = {r.id: r.category for r in records}
    found = {i: f"stops mid-sentence, where {have} of {n} {category[i]} answers end a sentence"
             for i, (have, n) in lacking.items()}
    for r in records:
        if r.id not in found and cut_off(r.output):
            found[r.id] = "stops mid-sentence: its other sentences end, its last does not"
    return found


_WORD_OR_NUMBER = re.compile(r"[^\W\d_]+|\d+")


def content_units(text: str) -> set[str]:
    """What a text says, as comparable units: Latin words and numbers without their punctuation
    ("whale:" is "whale"), and single CJK letters (no spaces to split words on)."""
    out: set[str] = set()
    for token in _WORD_OR_NUMBER.findall(unicodedata.normalize("NFKC", text).casefold()):
        if token.isascii():
            out.add(token)
        else:
            out |= {ch for ch in token if unicodedata.category(ch).startswith("L")}
    return out


def grounding(r: Record, said: set[str] | None = None) -> float | None:
    """The share of the answer's units (`said`, if already read) that its instruction or input holds;
    None for no answer."""
    said = content_units(r.output) if said is None else said
    return len(said & content_units(f"{r.instruction} {r.input}")) / len(said) if said else None


# On the dev sets (bench/sets/dev_*), closed_qa and classification answers are drawn from their context
# (median grounding 1.0; every clean one >= 0.79); the plants among them stood at 0.0-0.33: an answer in
# another language, a sentence where one label was asked for, an answer to a passage that is not there.
GROUNDED_CATEGORY = 0.8  # a category whose median answer is this grounded answers from its context
UNGROUNDED = 0.5  # an answer of such a category with less than this from its context
# A short answer may be worked out from its passage without repeating it ("Two and a half hours." from
# 8:15 and 10:45, in the shipped sample); only a longer one that shares little is not drawn from it.
GROUNDED_MIN_UNITS = 6


def off_context_answers(records: list[Record]) -> dict[str, str]:
    """id -> why, for answers mostly not drawn from their instruction and input, in a category whose
    answers nearly all are (read from the data: extractive QA, labelling): an answer to another question,
    one made up beside its passage, a sentence where a label from the list was asked for."""
    shares: dict[str, dict[str, float]] = defaultdict(dict)
    units_of: dict[str, int] = {}
    for r in records:
        if r.category == "translation":
            continue
        said = content_units(r.output)
        units_of[r.id] = len(said)
        if (share := grounding(r, said)) is not None:
            shares[r.category][r.id] = share
    found = {}
    for category, by_id in shares.items():
        values = sorted(by_id.values())
        if len(values) < CATEGORY_MIN_RECORDS or values[len(values) // 2] < GROUNDED_CATEGORY:
            continue
        for rid, share in by_id.items():
            if share < UNGROUNDED and units_of[rid] >= GROUNDED_MIN_UNITS:
                found[rid] = (f"{share:.0%} of its answer is in its instruction and input, where the median "
                              f"{category} answer takes {values[len(values) // 2]:.0%} from them")
    return found


# Negation as each language writes it; in English also what other languages write with one ("rather than"
# for ではなく, "barely moves" for 几乎不动). Japanese: the ない forms of verbs (not the adjectives 少ない,
# 危ない), ません, the ず and ざる forms; しか…ない is "only", not a negation. Chinese: 不 (not in words
# where it negates nothing: 不同 different, 不过 but, 不断 constantly, ...), 没(有), 无法, 未, 并非.
_NEGATION = {
    "en": re.compile(r"\b(?:not|never|no|none|neither|nor|cannot|without|hardly|barely|scarcely)\b|n't\b|\bnon-|"
                     r"\brather than\b|\binstead of\b", re.IGNORECASE),
    "ja": re.compile(r"(?<![少危])ない|なかっ|なければ|なくて|ではなく|ません|ず(?=[、。にとも])|ざる|無い"),
    "zh": re.compile(r"不(?![同过断久仅少但论管然停料足])|没有|没|无法|未|并非|非(?![常洲])"),
}


def negations(text: str, lang: str | None) -> int | None:
    """How many negations `text` holds in `lang`; None for a language not read here."""
    if lang not in _NEGATION:
        return None
    found = len(_NEGATION[lang].findall(text))
    return max(0, found - text.count("しか")) if lang == "ja" else found


def translation_polarity_flips(records: list[Record]) -> dict[str, str]:
    """id -> why, for translations of which one side negates and the other does not: "cannot fly"
    rendered as "can fly", "is not issued by any central bank" as "is issued by central banks"."""
    found = {}
    for r in records:
        if r.category != "translation":
            continue
        source, target = negations(r.input, r.source_lang), negations(r.output, r.lang)
        if source is not None and target is not None and (source == 0) != (target == 0):
            negated, plain = ("input", "output") if source else ("output", "input")
            found[r.id] = f"the {negated} negates and the {plain} does not: a translation that flips the meaning"
    return found


# Declining or disclaiming, in the first sentence of an answer: what a chat model says when it will
# not answer. In an instruction set, such an answer teaches the model to refuse what it should answer.
_REFUSAL = re.compile(
    r"(?i)\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i can(?:no|')t (?:help|answer|provide|assist|write|create|do)"
    r"|i(?:'m| am) (?:unable|not able) to|as an ai\b|(?:an )?ai (?:language )?model|i don'?t have (?:access|the ability))"
    r"|申し訳(?:ありません|ございません)|お答え(?:することは)?できません|(?:AI|人工知能)(?:として|である私)|言語モデル"
    r"|抱歉|对不起|我?无法(?:回答|提供|进行|创作|完成)|作为(?:一个)?(?:人工智能|AI)|语言模型")
_SENTENCE_BREAK = re.compile(r"(?<=[。！？!?.])\s*")


def refusals(records: list[Record]) -> dict[str, str]:
    """id -> why, for answers whose first sentence declines or disclaims ("I'm sorry, but I can't…",
    "申し訳ありませんが…", "抱歉，作为一个人工智能…")."""
    found = {}
    for r in records:
        opening = _SENTENCE_BREAK.split(r.output.strip(), maxsplit=1)[0]
        if match := _REFUSAL.search(opening):
            found[r.id] = f"the answer declines or disclaims (\"{match.group()}\"): it teaches the model to refuse"
    return found


# A count the instruction asks for, of things an answer lists or lines it writes: "list exactly three
# novels", "a four-line poem", "3つ挙げて", "四行小诗". Sentences and words are not counted (a line may
# hold several), nor "one" ("一个谜语" is "a riddle").
_COUNT_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_COUNT_WORDS |= dict(zip("一二两三四五六七八九十", (1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10)))
_ASKED_COUNT = (
    re.compile(r"(?i)\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten)[- ](?:[a-z]+[- ])?(items?|things|ways|"
               r"ideas|tips|examples|reasons|lines?|novels|books|places|points|steps|facts|questions|names|"
               r"suggestions|activities|options)\b"),
    re.compile(r"(\d+|[一二三四五六七八九十])(つ|個|行|点|案|冊|か所|カ所)"),
    re.compile(r"(\d+|[一二两三四五六七八九十])(个|条|條|行|点|种|本|处)"),
)


def asked_count(instruction: str) -> tuple[int, str] | None:
    """(how many, of what) an instruction asks for, where it names a count of two or more."""
    for pattern in _ASKED_COUNT:
        if match := pattern.search(instruction):
            said = match.group(1).lower()
            count = int(said) if said.isdigit() else _COUNT_WORDS[said]
            return (count, match.group(2)) if count >= 2 else None
    return None


def ignored_counts(records: list[Record]) -> dict[str, str]:
    """id -> why, for answers that list or write another number of items or lines than their
    instruction asks for ("exactly three" and five novels, a "four-line poem" of eight lines). Items
    are the lines with a list marker where there are some, else the lines; a one-line answer is not
    counted (prose may list anything)."""
    found = {}
    for r in records:
        if r.category == "translation" or not (asked := asked_count(r.instruction)):
            continue
        lines = _lines(r.output)
        items = sum(item for item, _ in lines)
        given = items if items > 1 else len(lines)
        if given > 1 and given != asked[0]:
            found[r.id] = f"the instruction asks for {asked[0]} ({asked[1]}), the answer gives {given}"
    return found


# A length the instruction sets: "in no more than 20 words", "用不超过二十个字", "50字以内で", "一言で"
# (in a word), "in one sentence". (pattern, what it limits, the limit where the pattern holds no number).
_NUMBER = r"(\d+|[a-z]+|[一二两三四五六七八九十百]+)"
_LENGTH_LIMITS = (
    (re.compile(rf"(?i)\b(?:no more than|not more than|at most|under|fewer than|less than|up to|maximum of)\s+"
                rf"{_NUMBER}\s+(word|character|sentence)s?\b"), None),
    (re.compile(rf"(?i)\bin\s+{_NUMBER}\s+(word|sentence)s?\s+or\s+(?:less|fewer)\b"), None),
    (re.compile(r"(?i)\b(?:in|as|with|using)\s+(?:a single|one|1)\s+(word|sentence)\b"), 1),
    (re.compile(r"(?i)\bone-(sentence)\b"), 1),
    (re.compile(rf"(?:不超过|不多于|少于|最多|限)\s*{_NUMBER}\s*个?(字)"), None),
    (re.compile(rf"{_NUMBER}\s*个?(字)(?:以内|之内)"), None),
    (re.compile(rf"{_NUMBER}\s*(文字|字)(?:以内|以下|程度|前後|くらい)"), None),
    (re.compile(r"(?:用|以)(一句话)"), 1),
    (re.compile(r"(一言|一文)で"), 1),
)
_LIMIT_UNIT = {"word": "words", "character": "characters", "sentence": "sentences", "字": "characters",
               "文字": "characters", "一句话": "sentences", "一言": "sentences", "一文": "sentences"}
_PER_ITEM = re.compile(r"各|每|それぞれ|\beach\b|\bper\b", re.IGNORECASE)  # "各用一句话": a limit per item
LENGTH_OVER = 1.5  # an answer this many times its limit (and a few units more) ignores it, not rounds it
LENGTH_SLACK = {"words": 3, "characters": 4, "sentences": 1}


def length_limit(instruction: str) -> tuple[int, str] | None:
    """(limit, "words" | "characters" | "sentences") an instruction sets on the whole answer, if it sets one."""
    if _PER_ITEM.search(instruction):
        return None
    for pattern, fixed in _LENGTH_LIMITS:
        if match := pattern.search(instruction):
            said, unit = (str(fixed), match.group(1)) if fixed else match.groups()
            count = int(said) if said.isdigit() else _COUNT_WORDS.get(said.lower()) or numbers_in(said)
            if count:
                return count, _LIMIT_UNIT[unit.lower()]
    return None


def numbers_in(text: str) -> int | None:
    """A Chinese or Japanese numeral alone ("二十", "百"), as an int."""
    found = list(numbers(text + "个"))
    return int(found[0]) if len(found) == 1 else None


def length_of(text: str, unit: str) -> int:
    if unit == "characters":
        return sum(1 for ch in text if not (ch.isspace() or unicodedata.category(ch)[0] in "PS"))
    if unit == "words":
        return len(re.findall(r"[A-Za-z0-9'’-]+", text))
    return len([s for s in _INNER_SENTENCE_END.split(text) if len(s.strip()) > 1])


def overlong_answers(records: list[Record]) -> dict[str, str]:
    """id -> why, for answers far longer than the length their instruction sets ("no more than 20 characters"
    and a paragraph of 80, "一言で" and five sentences)."""
    found = {}
    for r in records:
        if r.category == "translation" or not (limit := length_limit(r.instruction)):
            continue
        count, unit = limit
        given = length_of(r.output, unit)
        if given > count * LENGTH_OVER + LENGTH_SLACK[unit]:
            found[r.id] = f"the instruction asks for at most {count} {unit}, the answer has {given}"
    return found


# What a question is about, comparable within a language: Latin words of three letters or more but the
# commonest function words, and pairs of adjacent CJK letters (single characters are shared by everything;
# a pair is close to a word: 心脏, 富士, クモ).
_FUNCTION_WORDS = frozenset(
    "the and are was were been its this that these those with for from into than which who whom whose what when "
    "where why how not but his her hers their they them she you your our can could would should will shall does "
    "did has have had may might must there here about some any all each other such very more most also only "
    "give tell name list write explain describe please".split())
_WORD_RUN = re.compile(r"[^\W\d_]+")


def topic_units(text: str) -> set[str]:
    out: set[str] = set()
    for run in _WORD_RUN.findall(unicodedata.normalize("NFKC", text).casefold()):
        if run.isascii():
            if len(run) > 2 and run not in _FUNCTION_WORDS:
                out.add(run)
        else:
            out |= {a + b for a, b in pairwise(run)}
    return out


# An answer to another question: it holds little of what its own question is about and most of what
# another question of the data (not a rewording of its own) is about. Only where answers address their
# question by habit (QA; a poem or a list of ideas strays by design). On the dev sets and the sample every
# clean QA answer either covers more than ANSWERS_OWN of its question or covers no other question as
# well as ANSWERS_OTHER ("What is the smallest country?" and "Vatican City, ..." share nothing, and no
# other question more than half).
MISPLACED_CATEGORIES = ("open_qa", "closed_qa")
ANSWERS_OWN = 0.15
ANSWERS_OTHER = 0.6
MATCHED_UNITS = 2  # "Canberra" alone is not what "things to do in Canberra" asks
COMMON_UNIT = 0.05  # a unit in more than this share of the questions leads to no candidate (still weighed)


def misplaced_answers(records: list[Record]) -> dict[str, str]:
    """id -> why, for QA answers that answer another question of the data rather than their own: an answer
    shifted by a row, pasted under the wrong question. Weighed by rarity (IDF over the questions), so a
    shared "capital" counts less than a shared "Canberra"; indexed, so each answer meets only the
    questions that share a rare unit with it."""
    answer = {r.id: topic_units(r.output) for r in records}
    said_anywhere = Counter(u for units_ in answer.values() for u in units_)
    asked = {r.id: topic_units(f"{r.instruction} {r.input}") for r in records}
    seen = Counter(u for units_ in asked.values() for u in units_)
    # A unit no other question or answer holds can be matched by nothing; leaving it out keeps the CJK pairs
    # that straddle two words (素是, 由哪) from diluting what a question is about.
    question = {rid: {u for u in units_ if seen[u] + said_anywhere[u] > 1} for rid, units_ in asked.items()}
    weight = {u: math.log((len(records) + 1) / (n + 0.5)) for u, n in seen.items()}
    asking: dict[str, list[str]] = defaultdict(list)
    for rid, units_ in question.items():
        for u in units_:
            if seen[u] <= max(2, COMMON_UNIT * len(records)):
                asking[u].append(rid)

    def covered(said: set[str], asked: set[str]) -> float:
        total = sum(weight[u] for u in asked)
        return sum(weight[u] for u in said & asked) / total if total else 1.0

    by_id = {r.id: r for r in records}
    found = {}
    for r in records:
        if r.category not in MISPLACED_CATEGORIES or not r.output.strip():
            continue
        said = answer[r.id]
        if covered(said, question[r.id]) > ANSWERS_OWN:
            continue
        others = {o for u in said for o in asking.get(u, ()) if o != r.id and by_id[o].lang == r.lang}
        fits = sorted((covered(said, question[o]), o) for o in others if len(said & question[o]) >= MATCHED_UNITS)[::-1]
        if fits and fits[0][0] >= ANSWERS_OTHER:
            share, other = fits[0]
            found[r.id] = (f"its answer holds {share:.0%} of what {other}'s question asks about "
                           f"and {covered(said, question[r.id]):.0%} of its own")
    return found
