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
