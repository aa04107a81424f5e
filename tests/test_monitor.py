"""The instability detector and the model-free record checks, on crafted inputs."""

import math
import random

import pytest

from bonsai.config import MonitorConfig
from bonsai.data.checks import find_contradictions, find_language_mismatches, outvoted, script_language, written_in
from bonsai.observe.monitor import SpikeDetector, strongest_action
from bonsai.data.records import Record
from conftest import sample_records


def _falling_noisy(n, seed=0):
    rng = random.Random(seed)
    return [6.0 * math.exp(-i / 60) + 1.0 + rng.gauss(0, 0.05) for i in range(n)]


def _run(detector, losses, grads=None):
    grads = grads or [1.0 + 0.01 * (i % 7) for i in range(len(losses))]
    return [e for i, (l, g) in enumerate(zip(losses, grads)) for e in detector.check(i + 1, l, g)]


def test_spike_on_a_falling_loss_is_found_at_its_step():
    losses = _falling_noisy(200)
    clean = _run(SpikeDetector(MonitorConfig(trend_window=0)), losses)
    assert clean == []
    losses[150] += 1.0  # ~20 sigma of the step-to-step noise
    events = _run(SpikeDetector(MonitorConfig(trend_window=0, on_loss_spike="skip")), losses)
    assert [(e.step, e.kind, e.action) for e in events] == [(151, "loss_spike", "skip")]
    assert events[0].value > 6 and events[0].severity == events[0].value / 6


def test_no_spike_is_called_during_warmup():
    losses = _falling_noisy(40)
    losses[10] += 3.0
    assert _run(SpikeDetector(MonitorConfig(trend_window=0, warmup_steps=20)), losses) == []


def test_grad_spike_and_spikes_stay_out_of_the_baseline():
    losses = _falling_noisy(120)
    grads = [1.0 + 0.02 * math.sin(i) for i in range(120)]
    grads[80] = grads[81] = 9.0  # two in a row: the first must not hide the second
    events = _run(SpikeDetector(MonitorConfig(trend_window=0)), losses, grads)
    assert [(e.step, e.kind) for e in events] == [(81, "grad_spike"), (82, "grad_spike")]


def test_non_finite_values_are_always_events_with_their_policy():
    d = SpikeDetector(MonitorConfig(on_nonfinite="rollback"))
    (event,) = d.check(1, float("nan"), 1.0)
    assert (event.kind, event.statistic, event.action) == ("nonfinite", "loss", "rollback")
    (event,) = d.check(2, 1.0, float("inf"))
    assert event.statistic == "grad_norm" and event.to_dict()["value"] == "inf"


def test_trend_event_when_the_loss_stops_falling_and_once_only():
    flat = [2.0 + 0.01 * ((i * 7) % 5) for i in range(300)]
    events = _run(SpikeDetector(MonitorConfig(trend_window=50, warmup_steps=20)), flat)
    assert [e.kind for e in events] == ["trend"]
    assert _run(SpikeDetector(MonitorConfig(trend_window=50)), _falling_noisy(300)) == []


def test_strongest_action_wins():
    d = SpikeDetector(MonitorConfig(on_loss_spike="warn", on_nonfinite="skip"))
    assert strongest_action(d.check(1, float("nan"), 1.0)) == "skip"
    assert strongest_action([]) is None


def test_script_language():
    assert script_language("日本で一番高い山は富士山です。") == "ja"
    assert script_language("日本最高的山是富士山。") == "zh"
    assert script_language("The highest mountain in Japan is Mount Fuji.") == "en"
    assert script_language("3776") is None


def test_kanji_only_japanese_is_not_called_chinese_and_other_latin_languages_are_named():
    # Forms only Japanese writes (庁 駅 経 済 図) say ja; forms only Chinese writes (这 图 车) say zh;
    # kanji common to both leave both open. A language identifier alone calls all of these Chinese.
    assert written_in("経済産業省") == written_in("東京都庁") == written_in("駅前広場") == {"ja"}
    assert written_in("这是什么车？") == written_in("图书馆") == {"zh"}
    assert written_in("富士山") == written_in("北京大学") == {"ja", "zh"}
    assert written_in("A：肯定的\nB：否定的\nC：肯定的\nD：否定的") == {"ja", "zh"}  # labels: short runs, however many
    assert written_in("La capitale de la France est Paris, une ville ancienne et magnifique.") == {"fr"}
    assert written_in("The capital of Brazil is Brasília.") == {"en"}  # too short to trust a Portuguese guess
    base = dict(instruction="日本の省庁は？", input="", category="closed_qa", lang="ja")
    records = [Record(id="term", output="経済産業省", **base), Record(id="mountain", output="富士山", **base),
               Record(id="zh", output="这是中国的首都北京。", **base),
               Record(id="fr", output="Le mont Fuji est la plus haute montagne du Japon, au sud-ouest de Tokyo.",
                      **{**base, "lang": "en", "instruction": "Highest mountain in Japan?"})]
    assert find_language_mismatches(records) == {"zh": "zh", "fr": "fr"}


def test_contradictions_and_language_mismatches():
    base = dict(instruction="What is the capital of France?", input="", category="open_qa", lang="en")
    records = [Record(id="a", output="Paris.", **base), Record(id="b", output="Berlin.", **base),
               Record(id="c", output=" paris. ", **{**base, "instruction": "what is the capital of  France?"}),
               Record(id="d", output="法国的首都是巴黎。", **{**base, "instruction": "Capital of France?"})]
    assert find_contradictions(records) == {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    assert find_language_mismatches(records) == {"d": "zh"}


def test_clean_sample_has_no_contradictions_or_mismatches():
    fields = ("id", "instruction", "input", "output", "category", "lang", "source_lang")
    records = [Record(**{k: r.get(k, "" if k == "input" else None) for k in fields}) for r in sample_records()]
    assert find_contradictions(records) == {}
    assert find_language_mismatches(records) == {}


def test_flops_per_token_follows_the_documented_formula(tiny_dir):
    import torch

    from bonsai.config import ModelConfig
    from bonsai.model.loading import load_model
    from bonsai.observe.throughput import flops_per_token

    full = load_model(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir)), torch.float32)
    n = sum(p.numel() for p in full.parameters())
    cfg = full.config
    assert flops_per_token(full, 256) == 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * 256
    lora = load_model(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir), finetune="lora"), torch.float32)
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert flops_per_token(lora, 256) == 6 * adapters + 4 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * 256


def test_a_detector_restored_from_its_state_decides_as_the_original():
    """What resuming from a checkpoint does: the restored detector sees a spike 5 steps after the
    restore that a fresh one (still in its warm-up) would miss."""
    losses = _falling_noisy(200)
    losses[155] += 1.0
    cfg = MonitorConfig(trend_window=50)
    straight = _run(SpikeDetector(cfg), losses)
    first = SpikeDetector(cfg)
    _run(first, losses[:150])
    restored = SpikeDetector(cfg)
    restored.load_state_dict(first.state_dict())
    grads = [1.0 + 0.01 * (i % 7) for i in range(200)]  # as _run gives them
    tail = [e for i, (l, g) in enumerate(zip(losses[150:], grads[150:])) for e in restored.check(151 + i, l, g)]
    assert [(e.step, e.kind) for e in tail] == [(e.step, e.kind) for e in straight if e.step > 150]
    assert (156, "loss_spike") in [(e.step, e.kind) for e in tail]
    fresh = SpikeDetector(cfg)
    assert not [e for i, l in enumerate(losses[150:]) for e in fresh.check(151 + i, l, 1.0)]


def test_the_outvoted_side_of_a_contradiction_is_the_suspect_and_broken_text_is_named_without_a_model():
    from bonsai.data.textmetrics import text_oddity
    from bonsai.observe.report import score_records

    base = dict(instruction="What is the capital of France?", input="", category="open_qa", lang="en")
    records = [Record(id="right-1", output="The capital of France is Paris.", **base),
               Record(id="right-2", output="The capital of France is Paris.", **base),
               Record(id="wrong", output="The capital of France is Berlin.", **base),
               Record(id="pair-a", output="Rome.", **{**base, "instruction": "Capital of Italy?"}),
               Record(id="pair-b", output="Milan.", **{**base, "instruction": "Capital of Italy?"}),
               Record(id="garbage", output="#$%& 0193 *+-/ <=>?@ ^~|q 7x8z", **{**base, "instruction": "Describe it."}),
               Record(id="loop", output="I like tea. " * 6, **{**base, "instruction": "What do you like?"})]
    assert outvoted(records) == {"wrong"}  # 1-to-1 (pair-a, pair-b) has no majority
    table = {row["id"]: row for row in score_records(records, {}, [])}
    assert table["wrong"]["why"].endswith("with another answer (outvoted)") and not table["right-1"]["why"]
    assert table["pair-a"]["why"] and table["pair-b"]["why"]
    assert table["garbage"]["odd_text"].startswith("output is") and "symbols and digits" in table["garbage"]["why"]
    assert "repeats itself" in table["loop"]["why"]
    assert text_oddity("3776 m") is None and text_oddity("The capital of France is Paris.") is None
    assert text_oddity("1. 胶泥活字（11世纪40年代）\n2. 电话（1876年）\n3. 本茨专利汽车（1886年）") is None  # dates, each one unit
    assert not [r["id"] for r in sample_records() if text_oddity(r["output"])]  # no false alarm on the sample


def test_the_answer_its_input_does_not_state_is_the_rejected_side_even_when_both_echo_other_answers():
    """tests/planted.py seed 1 at 5 %: a wrong fact that is another question's answer ("2時間半です。"),
    against a right one that its translation in another record also says ("1707年"): both echo another
    question's answer, so only the input, which states 1707, takes a side."""
    from bonsai.observe.report import rejected_sides, score_records

    base = dict(instruction="富士山が最後に噴火したのはいつですか？", input="富士山は本州にある活火山です。最後の噴火は1707年でした。",
                category="closed_qa", lang="ja")
    records = [Record(id="right", output="1707年です。", **base),
               Record(id="wrong", output="2時間半です。", **base),
               Record(id="other-question", output="2時間半です。", **{**base, "instruction": "映画の長さは？",
                                                                      "input": "映画は2時間半です。"}),
               Record(id="right-in-zh", output="1707年。", **{**base, "instruction": "富士山最后一次喷发是什么时候？",
                                                              "input": "富士山最后一次喷发是在1707年。", "lang": "zh"})]
    contradictions = find_contradictions(records)
    assert set(contradictions) == {"right", "wrong"}
    assert rejected_sides(records, contradictions) == {"wrong": "its answer is not in the input; right's is"}
    table = {row["id"]: row for row in score_records(records, {}, [])}
    assert table["wrong"]["why"] and not table["right"]["why"]


@pytest.mark.parametrize("ratio", [0.01, 0.05])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_suspect_ranking_finds_each_kind_of_planted_record_from_the_data_alone(seed, ratio):
    """tests/planted.py's varied sets (wrong facts, conflicting translations, garbage, wrong language,
    loops), ranked as the report ranks them before any training signal: the targets of issue 17
    (>= 0.9 precision and recall at k = number planted, >= 0.8 recall for every kind) and the planted side
    of a contradiction above the clean record it contradicts."""
    from bonsai.data.records import Where, validate_record
    from bonsai.observe.report import score_records
    from planted import precision_recall_at_k, varied_planted_set

    records, kinds = varied_planted_set(seed, ratio)
    valid = [validate_record(r, Where("planted", i)) for i, r in enumerate(records, start=1)]
    table = [row for row in score_records(valid, {}, []) if row["why"]]
    figures = precision_recall_at_k([row["id"] for row in table], kinds)
    assert figures["precision"] >= 0.9 and figures["recall"] >= 0.9, figures
    assert min(figures["recall_per_kind"].values()) >= 0.8, figures
    position = {row["id"]: i for i, row in enumerate(table)}
    for row in table:
        if kinds.get(row["id"]) in ("contradiction", "translation_conflict"):
            assert all(position[row["id"]] < position.get(o, len(table)) for o in row["contradicts"]), row
