"""Generation uses the training template byte for byte; repetition and quality metrics on crafted text."""

import json

import pytest

from bonsai.config import DecodeConfig
from bonsai.data.records import CATEGORIES, LANGUAGES
from bonsai.evaluate.generation import Generation, cut_at_stop, generate, load_probes, prompt_batch
from bonsai.data.records import BadRecord, Record
from bonsai.data.template import TEMPLATES, encode_record, render_prompt
from bonsai.data.textmetrics import longest_repeated_span, quality_metrics, repetition_metrics, units


def test_generation_prompt_is_the_training_prompt_byte_for_byte(tokenizer):
    probes = load_probes("default")
    records = [p.record for p in probes]
    ids, mask = prompt_batch(tokenizer, records, "cpu")
    for row, row_mask, record in zip(ids, mask, records):
        prompt = row[row_mask.bool()].tolist()
        training = encode_record(tokenizer, Record(**{**record.__dict__, "output": "x"}))
        first_target = training.labels.index(next(t for t in training.labels if t != -100))
        assert prompt == training.input_ids[:first_target]
        assert tokenizer.decode(prompt) == render_prompt(record)
        assert row_mask[: len(row) - len(prompt)].sum() == 0  # left padding only


def test_batched_generation_equals_one_at_a_time(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    records = [p.record for p in load_probes("default")][:10]
    batched = generate(model, tokenizer, records, DecodeConfig(max_new_tokens=12, batch_size=5))
    single = generate(model, tokenizer, records, DecodeConfig(max_new_tokens=12, batch_size=1))
    assert batched == single and all(isinstance(o.text, str) for o in batched)


def test_default_probes_cover_every_category_and_language():
    probes = load_probes("default")
    assert {p.record.category for p in probes} == set(CATEGORIES)
    assert {p.record.lang for p in probes} == set(LANGUAGES)
    ids = {p.record.id for p in probes}
    assert {"probe-mountain-ja", "probe-translate-ja2en", "probe-translate-en2ja", "probe-capital-fr-en"} <= ids
    assert all(p.reference for p in probes if p.record.category in ("closed_qa", "classification", "translation"))


def test_bad_probe_file_names_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "instruction": "Hi", "category": "open_qa", "lang": "en"}) + "\n"
                    + json.dumps({"id": "b", "instruction": "Hi", "category": "chat", "lang": "en"}) + "\n")
    with pytest.raises(BadRecord, match=r"p.jsonl:2: field 'category'"):
        load_probes(path)


def test_units_split_cjk_by_character_and_latin_by_word():
    assert units("富士山です。") == ["富", "士", "山", "で", "す", "。"]
    assert units("Mount Fuji, 3776 m") == ["Mount", "Fuji,", "3776", "m"]
    assert units("東京 is big") == ["東", "京", "is", "big"]


def test_repetition_metrics_on_crafted_strings():
    clean = repetition_metrics("the quick brown fox jumps over the lazy dog")
    assert clean["repeated_3gram_ratio"] == 0.0 and clean["distinct_2"] == 1.0
    assert clean["longest_repeated_span"] == 1.0  # "the"
    looping = repetition_metrics("I like tea. I like tea. I like tea. I like tea.")
    # 10 trigrams, 3 distinct ("I like tea.", "like tea. I", "tea. I like")
    assert looping["repeated_3gram_ratio"] == pytest.approx(0.7)
    assert looping["distinct_1"] == pytest.approx(3 / 12)
    assert looping["longest_repeated_span"] == 6.0  # two non-overlapping copies of "I like tea." x2
    assert repetition_metrics("") == {"repeated_3gram_ratio": 0.0, "distinct_1": 1.0, "distinct_2": 1.0,
                                      "longest_repeated_span": 0.0, "length": 0.0}
    ja = repetition_metrics("山山山山山山")
    assert ja["distinct_1"] == pytest.approx(1 / 6) and ja["longest_repeated_span"] == 3.0


def test_longest_repeated_span_does_not_count_overlap():
    assert longest_repeated_span(list("abcabc")) == 3
    assert longest_repeated_span(list("aaaa")) == 2
    assert longest_repeated_span(list("abcd")) == 0


def test_quality_metrics():
    assert quality_metrics("classification", "Positive", "positive") == {"exact": 1.0, "contains": 1.0}
    assert quality_metrics("open_qa", "The capital is Paris.", "Paris") == {"exact": 0.0, "contains": 1.0}
    perfect = quality_metrics("translation", "Good morning.", "Good morning.")["chrf"]
    partial = quality_metrics("translation", "Good evening.", "Good morning.")["chrf"]
    assert perfect == pytest.approx(100.0) and 0 < partial < perfect
    assert quality_metrics("creative", "a poem", None) == {}


def test_generation_stops_at_the_templates_next_section():
    assert cut_at_stop("Tokyo.\n### Category: open_qa\n### Instruction:") == "Tokyo."


def test_end_of_sequence_and_language_switch_rates_per_category_and_language(tokenizer):
    """An answer counts as stopped where EOS or the template's next turn came before max_new_tokens, and
    as switched where its script says another language than the one asked for; both are averaged per
    category and language (an answer too short to tell a language from does not count for that rate)."""
    from bonsai.evaluate.generation import _generation, average_by_category, generation_rows

    eos, text_ids = tokenizer.eos_token_id, tokenizer("Paris is the capital.")["input_ids"]
    assert _generation(tokenizer, text_ids + [eos, eos], TEMPLATES["bonsai"]).stopped
    assert _generation(tokenizer, tokenizer("Paris.\n### Category: x")["input_ids"], TEMPLATES["bonsai"]).stopped
    cut = _generation(tokenizer, text_ids, TEMPLATES["bonsai"])
    assert not cut.stopped and cut.text == "Paris is the capital."

    def record(i, category, lang):
        return Record(f"r{i}", "q", "", "x", category, lang, "en" if category == "translation" else None)

    made = [  # (record, answer, stopped)
        (record(0, "open_qa", "ja"), "富士山は日本で一番高い山です。", True),
        (record(1, "open_qa", "ja"), "Mount Fuji is the highest mountain in Japan.", True),  # switched
        (record(2, "open_qa", "zh"), "富士山是日本最高的山。", False),
        (record(3, "translation", "zh"), "富士山は日本で一番高い山です。", False),  # ja for zh: switched
        (record(4, "translation", "ja"), "3776", True),  # no letters: no language
        (record(5, "open_qa", "en"), "The highest mountain in Japan is Mount Fuji.", True),
    ]
    rows = generation_rows(tokenizer, [r for r, _, _ in made], [Generation(t, s) for _, t, s in made], [None] * 6)
    metrics = average_by_category(rows, "probe")
    assert metrics["probe/eos_rate"] == pytest.approx(4 / 6)
    assert metrics["probe/eos_rate_by_language/ja"] == pytest.approx(3 / 3)
    assert metrics["probe/eos_rate_by_language/zh"] == 0.0
    assert metrics["probe/eos_rate_by_category/translation"] == pytest.approx(1 / 2)
    assert metrics["probe/language_switch_rate"] == pytest.approx(2 / 5)
    assert metrics["probe/language_switch_rate_by_language/ja"] == pytest.approx(1 / 2)
    assert metrics["probe/language_switch_rate_by_language/zh"] == pytest.approx(1 / 2)
    assert metrics["probe/language_switch_rate_by_category/translation"] == 1.0
    assert metrics["probe/language_switch_rate_by_language/en"] == 0.0
