"""Prompt templates and tokenization; training and generation share these functions byte for byte.

A template is named (`model.template`: bonsai, phi2, chatml) and travels with the model as the
tokenizer's `chat_template`, so `tokenizer.apply_chat_template(record_messages(r), add_generation_prompt=True)`
gives, byte for byte, the prompt Bonsai trained on; generation and eval read it back from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bonsai.data.records import Record

IGNORE_INDEX = -100


def task_line(record: Record) -> str:
    if record.category == "translation" and record.source_lang:
        return f"translation ({record.source_lang} -> {record.lang})"
    return record.category


def _bonsai_prompt(record: Record) -> str:
    """The category is shown so one model serves all tasks."""
    parts = [f"### Category: {task_line(record)}\n", f"### Instruction:\n{record.instruction}\n\n"]
    if record.input.strip():
        parts.append(f"### Input:\n{record.input}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def _phi2_prompt(record: Record) -> str:
    """Phi-2's model card: `Instruct: <prompt>\\nOutput:`; the context, if any, on its own line."""
    context = f"{record.input}\n" if record.input.strip() else ""
    return f"Instruct: {record.instruction}\n{context}Output:"


def _chatml_prompt(record: Record) -> str:
    context = f"\n\n{record.input}" if record.input.strip() else ""
    return f"<|im_start|>user\n{record.instruction}{context}<|im_end|>\n<|im_start|>assistant\n"


# The same templates in Jinja, for tokenizer.apply_chat_template (and vLLM, TGI). A user message may carry
# the record's fields besides `content` (the instruction): input, category, lang, source_lang
# (record_messages). Without a category the bonsai template shows open_qa. Every answer ends with EOS.
_UNKNOWN_ROLE = "{{- raise_exception('only user and assistant messages: the template has no ' + message.role + ' turn') -}}"
_BONSAI_JINJA = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}"
    "{%- set category = message.category if message.category is defined and message.category else 'open_qa' -%}"
    "{{- '### Category: ' + category -}}"
    "{%- if category == 'translation' and message.source_lang is defined and message.source_lang -%}"
    "{{- ' (' + message.source_lang + ' -> ' + message.lang + ')' -}}{%- endif -%}"
    "{{- '\\n### Instruction:\\n' + message.content + '\\n\\n' -}}"
    "{%- if message.input is defined and message.input | trim -%}{{- '### Input:\\n' + message.input + '\\n\\n' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}{{- '### Response:\\n' + message.content + eos_token -}}"
    "{%- else -%}" + _UNKNOWN_ROLE + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)
_PHI2_JINJA = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}{{- 'Instruct: ' + message.content + '\\n' -}}"
    "{%- if message.input is defined and message.input | trim -%}{{- message.input + '\\n' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}{{- 'Output: ' + message.content + eos_token -}}"
    "{%- else -%}" + _UNKNOWN_ROLE + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Output:' -}}{%- endif -%}"
)
_CHATML_JINJA = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}{{- '<|im_start|>user\\n' + message.content -}}"
    "{%- if message.input is defined and message.input | trim -%}{{- '\\n\\n' + message.input -}}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' + message.content + eos_token -}}"
    "{%- else -%}" + _UNKNOWN_ROLE + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    render: Callable[[Record], str]  # the prompt: everything the model sees before its answer
    jinja: str  # the same as a chat template
    response_prefix: str = ""  # put before the answer (phi2: the space after "Output:")
    stop_texts: tuple[str, ...] = ()  # where a model that starts the template's next turn has finished


TEMPLATES = {
    "bonsai": PromptTemplate("bonsai", _bonsai_prompt, _BONSAI_JINJA, stop_texts=("\n### ",)),
    "phi2": PromptTemplate("phi2", _phi2_prompt, _PHI2_JINJA, response_prefix=" ",
                           stop_texts=("\nInstruct:", "\nOutput:")),
    "chatml": PromptTemplate("chatml", _chatml_prompt, _CHATML_JINJA, stop_texts=("<|im_end|>", "<|im_start|>")),
}
DEFAULT_TEMPLATE = "bonsai"
_BY_JINJA = {t.jinja: t for t in TEMPLATES.values()}


def use_template(tokenizer, name: str) -> None:
    """Make `name` the tokenizer's chat template: it is saved with the model and read back from there."""
    tokenizer.chat_template = TEMPLATES[name].jinja


def template_of(tokenizer) -> PromptTemplate:
    """The template a model was trained with: the one its tokenizer carries, else Bonsai's default (a base
    model without a chat template, or a model trained before templates were saved)."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if chat_template is None:
        return TEMPLATES[DEFAULT_TEMPLATE]
    found = _BY_JINJA.get(chat_template)
    if found is None:
        return PromptTemplate("(the model's own)", lambda r: _apply(tokenizer, r), chat_template)
    return found


def _apply(tokenizer, record: Record) -> str:
    return tokenizer.apply_chat_template(record_messages(record), add_generation_prompt=True, tokenize=False)


def record_messages(record: Record, with_answer: bool = False) -> list[dict]:
    """A record as chat messages: the instruction is the user's content, the other fields ride along."""
    user = {"role": "user", "content": record.instruction, "input": record.input, "category": record.category,
            "lang": record.lang, "source_lang": record.source_lang}
    return [user, {"role": "assistant", "content": record.output}] if with_answer else [user]


def render_prompt(record: Record, template: PromptTemplate = TEMPLATES[DEFAULT_TEMPLATE]) -> str:
    """Everything the model sees before its answer."""
    return template.render(record)


@dataclass(frozen=True)
class EncodedRecord:
    input_ids: list[int]
    labels: list[int]
    """input_ids with the prompt replaced by IGNORE_INDEX: the loss is on the response (and EOS) only."""

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def token_ids(tokenizer, text: str) -> list[int]:
    """`tokenizer(text, add_special_tokens=False)["input_ids"]`, straight from the Rust tokenizer when
    there is one: the same ids, without transformers' per-call wrapping, which was 60 % of the data
    pipeline's time (bench/data_pipeline.py)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, record: Record) -> list[int]:
    return token_ids(tokenizer, template_of(tokenizer).render(record))


def encode_record(tokenizer, record: Record) -> EncodedRecord:
    """The template is the tokenizer's (template_of). Prompt and response are tokenized apart so the
    prompt's tokens are exactly those generation sees; a joint tokenization could merge across them."""
    template = template_of(tokenizer)
    prompt = token_ids(tokenizer, template.render(record))
    response = token_ids(tokenizer, template.response_prefix + record.output) + [tokenizer.eos_token_id]
    return EncodedRecord(input_ids=prompt + response, labels=[IGNORE_INDEX] * len(prompt) + response)
