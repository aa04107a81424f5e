"""The prompt template and its tokenization; training and generation share these functions byte for byte."""

from __future__ import annotations

from dataclasses import dataclass

from bonsai.data.records import Record

IGNORE_INDEX = -100


def task_line(record: Record) -> str:
    if record.category == "translation" and record.source_lang:
        return f"translation ({record.source_lang} -> {record.lang})"
    return record.category


def render_prompt(record: Record) -> str:
    """Everything the model sees before its answer. The category is shown so one model serves all tasks."""
    parts = [f"### Category: {task_line(record)}\n", f"### Instruction:\n{record.instruction}\n\n"]
    if record.input.strip():
        parts.append(f"### Input:\n{record.input}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


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
    return token_ids(tokenizer, render_prompt(record))


def encode_record(tokenizer, record: Record) -> EncodedRecord:
    # Prompt and response are tokenized apart so the prompt's tokens are exactly those generation sees;
    # a joint tokenization could merge across the boundary.
    prompt = encode_prompt(tokenizer, record)
    response = token_ids(tokenizer, record.output) + [tokenizer.eos_token_id]
    return EncodedRecord(input_ids=prompt + response, labels=[IGNORE_INDEX] * len(prompt) + response)
