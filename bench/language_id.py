"""Which language a text is written in, as the report's and audit's label checks decide it: a language
identifier alone (lingua, ja/zh/en) against Bonsai's `written_in` (kana, the Han forms only one of
Japanese and Chinese writes, lingua for long Latin-script text).

    .venv/bin/python bench/language_id.py

Three sets: the shipped sample's outputs and translation inputs (labelled; every flag is a false alarm),
kanji-only Japanese answers (names of places, offices and things: every "zh" is a false alarm), and
Chinese sentences (every "ja only" is a miss). Prints the error counts of each method on each set.
"""

from __future__ import annotations

from lingua import Language, LanguageDetectorBuilder

from bonsai.data.checks import written_in
from bonsai.data.dataset import read_valid_records
from common import ROOT

KANJI_JA = ["経済産業省", "東京都庁", "気象庁", "駅前広場", "富士山", "東京大学", "日本国憲法", "国土交通省", "図書館",
            "京都駅", "大阪城", "北海道", "沖縄県", "新幹線", "広島平和記念公園", "鉄道", "横浜中華街", "姫路城"]
CHINESE = ["这是什么车？", "法国的首都是巴黎。", "我们明天去图书馆。", "日本最高的山是富士山。", "请把窗户打开。",
           "北京是中国的首都。", "长城很长。", "这个菜很好吃。"]


def lingua_says(detector, text: str) -> set[str]:
    found = detector.detect_language_of(text)
    return {found.iso_code_639_1.name.lower()} if found else set()


def main() -> None:
    detector = LanguageDetectorBuilder.from_languages(Language.ENGLISH, Language.JAPANESE, Language.CHINESE).build()
    labelled = []
    for r in read_valid_records(str(ROOT / "data" / "sample")):
        labelled.append((r.output, r.lang))
        if r.category == "translation":
            labelled.append((r.input, r.source_lang))
    sets = {
        f"sample texts, labelled ({len(labelled)}): false alarms": (labelled, lambda seen, lang: lang not in seen),
        f"kanji-only Japanese ({len(KANJI_JA)}): called not-ja": ([(t, "ja") for t in KANJI_JA],
                                                                  lambda seen, lang: lang not in seen),
        f"Chinese sentences ({len(CHINESE)}): not called zh": ([(t, "zh") for t in CHINESE],
                                                               lambda seen, lang: "zh" not in seen),
    }
    print(f"{'set':<48} {'lingua alone':>12} {'written_in':>10}")
    for name, (texts, wrong) in sets.items():
        by_lingua = sum(wrong(lingua_says(detector, t), lang) for t, lang in texts if written_in(t) is not None)
        by_bonsai = sum(wrong(seen, lang) for t, lang in texts if (seen := written_in(t)) is not None)
        print(f"{name:<48} {by_lingua:>12} {by_bonsai:>10}")


if __name__ == "__main__":
    main()
