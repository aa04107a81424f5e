"""The template shows the category; the loss mask covers the response and EOS only."""

from bonsai.data.records import Record
from bonsai.data.template import IGNORE_INDEX, encode_prompt, encode_record, render_prompt

TRANSLATION = Record(id="t1", instruction="次の日本語を英語に翻訳してください。", input="おはようございます。",
                     output="Good morning.", category="translation", lang="en", source_lang="ja")
OPEN_QA = Record(id="q1", instruction="What is the highest mountain in Japan?", input="", output="Mount Fuji.",
                 category="open_qa", lang="en")


def test_prompt_shows_category_and_input_only_when_present():
    assert render_prompt(TRANSLATION) == (
        "### Category: translation (ja -> en)\n### Instruction:\n次の日本語を英語に翻訳してください。\n\n"
        "### Input:\nおはようございます。\n\n### Response:\n"
    )
    assert render_prompt(OPEN_QA) == (
        "### Category: open_qa\n### Instruction:\nWhat is the highest mountain in Japan?\n\n### Response:\n"
    )


def test_loss_mask_covers_response_and_eos_only(tokenizer):
    for record in (TRANSLATION, OPEN_QA):
        enc = encode_record(tokenizer, record)
        prompt = encode_prompt(tokenizer, record)
        assert enc.input_ids[: len(prompt)] == prompt  # generation sees exactly these tokens
        assert enc.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        response = enc.labels[len(prompt):]
        assert response == enc.input_ids[len(prompt):]
        assert response[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(response[:-1]) == record.output
        assert enc.num_target_tokens == len(response)


def test_fast_path_token_ids_equal_the_tokenizer_call(tokenizer):
    """token_ids skips transformers' wrapper: every sample text (ja, en, zh), a literal special token
    and odd whitespace must still give exactly the tokenizer's ids."""
    from bonsai.data.template import token_ids
    from conftest import sample_records

    texts = [t for r in sample_records() for t in (r["instruction"], r["input"], r["output"])]
    texts += ["a<|endoftext|>b", "  two  spaces\n\ttab ", "", "絵文字 🙂 and ＡＢＣ"]
    for text in texts:
        assert token_ids(tokenizer, text) == tokenizer(text, add_special_tokens=False)["input_ids"], repr(text)


def _every_kind_of_record() -> list[Record]:
    """Every category in every language, with and without a context; translations in each direction."""
    from bonsai.data.records import CATEGORIES, LANGUAGES

    records = []
    for category in CATEGORIES:
        for lang in LANGUAGES:
            for context in ("", "背景: 富士山は 3776 m。\n二行目"):
                source = next(x for x in LANGUAGES if x != lang) if category == "translation" else None
                records.append(Record(id=f"{category}-{lang}-{bool(context)}", instruction=f"指示 instruction {lang}",
                                      input=context, output="答え answer 答案", category=category, lang=lang,
                                      source_lang=source))
    return records


def test_every_template_round_trips_through_the_saved_chat_template(tiny_dir, tmp_path):
    """What apply_chat_template gives from the saved tokenizer is, byte for byte and token for token, the
    prompt Bonsai trains on (and the whole conversation is prompt + answer + EOS), for every template,
    category and language; the saved template is recognised by name when the model is loaded back."""
    from transformers import AutoTokenizer

    from bonsai.config import ModelConfig
    from bonsai.data.template import TEMPLATES, record_messages, template_of, use_template
    from bonsai.model.loading import load_tokenizer

    for name, template in TEMPLATES.items():
        trained = load_tokenizer(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir)))
        use_template(trained, name)
        trained.save_pretrained(tmp_path / name)
        saved = AutoTokenizer.from_pretrained(tmp_path / name)
        assert template_of(saved) == template
        for record in _every_kind_of_record():
            prompt = saved.apply_chat_template(record_messages(record), add_generation_prompt=True, tokenize=False)
            assert prompt == template.render(record), (name, record.id)
            ids = saved.apply_chat_template(record_messages(record), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
            encoded = encode_record(trained, record)
            assert ids == encode_prompt(trained, record) == encoded.input_ids[: len(ids)], (name, record.id)
            whole = saved.apply_chat_template(record_messages(record, with_answer=True), tokenize=False)
            assert whole == prompt + template.response_prefix + record.output + saved.eos_token
            assert encoded.input_ids[len(ids):] == trained(template.response_prefix + record.output,
                                                           add_special_tokens=False)["input_ids"] + [saved.eos_token_id]


def test_templates_differ_and_a_model_without_one_gets_the_default(tiny_dir):
    from bonsai.config import ModelConfig
    from bonsai.data.template import TEMPLATES, template_of
    from bonsai.model.loading import load_tokenizer

    plain = load_tokenizer(str(tiny_dir), ModelConfig(name_or_path=str(tiny_dir)))
    assert template_of(plain).name == "bonsai"
    assert TEMPLATES["phi2"].render(OPEN_QA) == "Instruct: What is the highest mountain in Japan?\nOutput:"
    assert TEMPLATES["phi2"].render(TRANSLATION) == (
        "Instruct: 次の日本語を英語に翻訳してください。\nおはようございます。\nOutput:")
    assert TEMPLATES["chatml"].render(TRANSLATION) == (
        "<|im_start|>user\n次の日本語を英語に翻訳してください。\n\nおはようございます。<|im_end|>\n<|im_start|>assistant\n")
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    plain.chat_template = TEMPLATES["bonsai"].jinja
    import pytest
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="no system turn"):
        plain.apply_chat_template(system, add_generation_prompt=True, tokenize=False)


def test_a_model_trained_with_phi2s_format_is_prompted_in_it(tmp_path):
    """model.template travels with the model: `bonsai generate` on the trained dir prompts in phi2's format
    without being told, and --template overrides it."""
    import json
    import subprocess
    import sys

    from conftest import ROOT, base_config, run_train, subprocess_env, write_config

    run = tmp_path / "run"
    cfg = base_config(run, tmp_path / "cache")
    cfg["model"]["template"] = "phi2"
    cfg["train"].update(max_steps=3, warmup_steps=1)
    cfg["eval"] = {"probes": None}
    run_train(write_config(tmp_path / "c.yaml", cfg))
    assert "'Instruct: '" in (run / "model" / "chat_template.jinja").read_text()  # transformers 5's file for it
    probe = tmp_path / "p.jsonl"
    probe.write_text(json.dumps({"id": "p", "instruction": "日本で一番高い山は?", "category": "open_qa",
                                 "lang": "ja"}, ensure_ascii=False) + "\n")

    def prompt(*extra: str) -> str:
        out = subprocess.run([sys.executable, "-m", "bonsai.cli", "generate", str(run / "model"), "--file", str(probe),
                              "--max-new-tokens", "4", *extra], cwd=ROOT, env=subprocess_env(), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.splitlines()[-1])["prompt"]

    assert prompt() == "Instruct: 日本で一番高い山は?\nOutput:"
    assert prompt("--template", "bonsai").startswith("### Category: open_qa\n")

    # The model card: the data per category and language, and its "Use" snippet runs as written.
    card = (run / "model" / "README.md").read_text()
    assert "base_model: tiny-phi" in card and "`phi2`" in card and "| translation | 24 | 28 | 20 | 72 |" in card
    assert "| steps | 3 |" in card and "| saved as | float32 |" in card and "eval loss by language" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("path/to/this/directory", str(run / "model"))
    use = subprocess.run([sys.executable, "-c", snippet.replace("max_new_tokens=64", "max_new_tokens=4")],
                         capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert use.returncode == 0, use.stderr[-2000:]
