"""Generation with the training template: the prompt tokens are exactly those training put before the
response (`encode_prompt`), batched with left padding, with repetition controls. Each answer is scored
for repetition and quality, for whether it ended by itself (`eos_rate`: EOS or the template's next turn
before max_new_tokens) and for whether it is written in the language asked for (`language_switch_rate`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bonsai.config import DecodeConfig
from bonsai.data.checks import written_in
from bonsai.data.records import BadRecord, Record, Where, validate_record
from bonsai.data.template import DEFAULT_TEMPLATE, TEMPLATES, PromptTemplate, encode_prompt, template_of
from bonsai.data.textmetrics import quality_metrics, repetition_metrics
from bonsai.metric_keys import CATEGORY, LANGUAGE
from bonsai.model.compile import eager

DEFAULT_PROBES = Path(__file__).parents[1] / "probes" / "default.jsonl"


@dataclass(frozen=True)
class Probe:
    record: Record  # output holds the reference, or "" where the category has no single right answer

    @property
    def reference(self) -> str | None:
        return self.record.output or None


def load_probes(path: str | Path) -> list[Probe]:
    """Probe files use the record schema; `output` is the reference and may be left out."""
    path = Path(DEFAULT_PROBES if str(path) == "default" else path)
    probes = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = Where(str(path), line_no)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadRecord(where, "(line)", f"malformed JSON: {err.msg}", line) from None
        record = validate_record({**obj, "output": obj.get("output") or "(no reference)"}, where)
        probes.append(Probe(Record(**{**record.__dict__, "output": obj.get("output") or ""})))
    return probes


def prompt_batch(tokenizer, records: list[Record], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask: generation continues right after each prompt."""
    prompts = [encode_prompt(tokenizer, r) for r in records]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


@dataclass(frozen=True)
class Generation:
    text: str
    stopped: bool  # ended by itself (EOS, or the template's next turn) before max_new_tokens


def cut_at_stop(text: str, template: PromptTemplate = TEMPLATES[DEFAULT_TEMPLATE]) -> str:
    """The answer up to where the model starts the template's next turn (it has finished there)."""
    for stop in template.stop_texts:
        text = text.split(stop, 1)[0]
    return text.strip()


def _generation(tokenizer, new_tokens: list[int], template: PromptTemplate) -> Generation:
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    stopped = tokenizer.eos_token_id in new_tokens or any(stop in text for stop in template.stop_texts)
    return Generation(cut_at_stop(text, template), stopped)


@torch.no_grad()
def generate(model, tokenizer, records: list[Record], decode: DecodeConfig, synced: bool = False) -> list[Generation]:
    """`synced`: the weights are sharded over the ranks (ZeRO-3, FSDP2), so every rank must run every forward
    until all are done (transformers' synced_gpus), and call this with as many batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    template = template_of(tokenizer)
    outputs: list[Generation] = []
    for start in range(0, len(records), decode.batch_size):
        ids, mask = prompt_batch(tokenizer, records[start : start + decode.batch_size], device)
        sampled = decode.temperature > 0
        with eager():  # train.compile's layers: compiled for training shapes, not one token at a time
            new = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=decode.max_new_tokens,
                do_sample=sampled,
                temperature=decode.temperature if sampled else None,
                top_p=decode.top_p if sampled else None,
                repetition_penalty=decode.repetition_penalty,
                no_repeat_ngram_size=decode.no_repeat_ngram_size,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
                synced_gpus=synced,
            )[:, ids.shape[1] :]
        outputs += [_generation(tokenizer, row.tolist(), template) for row in new]
    if was_training:
        model.train()
    return outputs


def language_switch(record: Record, text: str) -> float | None:
    """1.0 where the answer is written in another language than the one asked for (a translation's
    `lang` is its target), 0.0 where it is in that one; None where its letters are too few to tell."""
    seen = written_in(text)
    return None if seen is None else float(record.lang not in seen)


def score_generation(record: Record, output: Generation, reference: str | None) -> dict[str, float]:
    switched = language_switch(record, output.text)
    return {**repetition_metrics(output.text), **quality_metrics(record.category, output.text, reference),
            "eos_rate": float(output.stopped), **({"language_switch_rate": switched} if switched is not None else {})}


def generation_rows(tokenizer, records: list[Record], outputs: list[Generation], references: list[str | None],
                    step: int | None = None) -> list[dict]:
    template = template_of(tokenizer)
    rows = []
    for record, output, reference in zip(records, outputs, references):
        rows.append({
            **({"step": step} if step is not None else {}),
            "id": record.id, "category": record.category, "lang": record.lang,
            "prompt": template.render(record), "output": output.text, "stopped": output.stopped,
            "reference": reference, "metrics": score_generation(record, output, reference),
        })
    return rows


def average_by_category(rows: list[dict], prefix: str) -> dict[str, float]:
    """`prefix/<metric>` averaged over rows, and `prefix/<metric>_by_category/<c>` and
    `_by_language/<l>` over each category's and language's rows (a metric counts where a row has it)."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row["metrics"].items():
            for key in (f"{prefix}/{name}", f"{prefix}/{name}{CATEGORY}{row['category']}",
                        f"{prefix}/{name}{LANGUAGE}{row['lang']}"):
                sums.setdefault(key, []).append(value)
    return {k: sum(v) / len(v) for k, v in sums.items()}
