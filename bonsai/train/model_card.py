"""The model card: README.md in every model dir a run writes (Hugging Face's format: YAML front matter,
then what the model is, what it learned from, how it was trained, how well, and how to load it)."""

from __future__ import annotations

from pathlib import Path

from bonsai import metric_keys as keys
from bonsai.config import BonsaiConfig
from bonsai.data.records import CATEGORIES, LANGUAGES, Record
from bonsai.data.template import TEMPLATES

_EXAMPLE = Record(id="example", instruction="次の日本語を英語に翻訳してください。", input="おはようございます。",
                  output="Good morning.", category="translation", lang="en", source_lang="ja")


def write_model_cards(model_dirs: list[Path], cfg: BonsaiConfig, facts: dict) -> None:
    """`facts`: version, world_size, global_batch, strategy (its layout described), precision, save_dtype, counts (the data
    scan), summary, eval (the last eval's metrics)."""
    for directory in model_dirs:
        adapter = (directory / "adapter_config.json").exists()
        (directory / "README.md").write_text(model_card(cfg, facts, adapter), encoding="utf-8")


def model_card(cfg: BonsaiConfig, facts: dict, adapter: bool) -> str:
    base = cfg.model.name_or_path
    kind = (f"LoRA (r {cfg.model.lora.r}, alpha {cfg.model.lora.alpha}, on {', '.join(cfg.model.lora.target_modules)})"
            + (": this directory holds the adapter" if adapter else ", merged into the base weights")
            if cfg.model.finetune == "lora" else "full fine-tuning")
    front = ["---", f"base_model: {base}", f"library_name: {'peft' if adapter else 'transformers'}",
             "pipeline_tag: text-generation", "tags: [bonsai, sft]", "---", ""]
    return "\n".join(front + [
        f"# {Path(cfg.train.output_dir).name}", "",
        f"Supervised fine-tuning of `{base}` with Bonsai {facts['version']}: {kind}.", "",
        *_template_section(cfg.model.template), *_data_section(cfg, facts["counts"]),
        *_training_section(cfg, facts), *_results_section(facts), *_usage_section(adapter),
    ])


def _template_section(name: str) -> list[str]:
    template = TEMPLATES[name]
    return ["## Prompt format", "",
            f"`{name}`, saved as this tokenizer's chat template (`chat_template.jinja`): "
            "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` gives the prompt it was "
            "trained on. A translation, for example:", "",
            "```", template.render(_EXAMPLE) + template.response_prefix + _EXAMPLE.output + "<EOS>", "```", ""]


def _data_section(cfg: BonsaiConfig, counts: dict) -> list[str]:
    groups = counts.get("train_by_group", {})
    langs = [lang for lang in LANGUAGES if any(g.endswith("/" + lang) for g in groups)]
    rows = [f"| {c} | " + " | ".join(str(groups.get(f"{c}/{lang}", 0)) for lang in langs)
            + f" | {sum(groups.get(f'{c}/{lang}', 0) for lang in langs)} |"
            for c in CATEGORIES if any(groups.get(f"{c}/{lang}") for lang in langs)]
    return ["## Data", "",
            f"`{cfg.data.path}`: {counts['train_records']:,} training records "
            f"({counts['train_target_tokens']:,} response tokens per epoch), {counts['eval_records']:,} held out "
            f"for eval, {counts['bad_records']} bad records"
            + (f", {len(counts.get('excluded_found', []))} excluded ({cfg.data.exclude})" if cfg.data.exclude else "")
            + ". Training records per category and language:", "",
            "| category | " + " | ".join(langs) + " | all |", "|---" * (len(langs) + 2) + "|", *rows, ""]


def _training_section(cfg: BonsaiConfig, facts: dict) -> list[str]:
    t = cfg.train
    warmup = t.warmup_steps if t.warmup_steps is not None else f"{t.warmup_ratio} of the steps"
    strategy = facts["strategy"]
    settings = [
        ("steps", f"{facts['summary']['steps']}"),
        ("global batch", f"{facts['global_batch']} rows of up to {cfg.data.max_length} tokens "
                         f"({'packed' if cfg.data.packing else 'one record per row'})"),
        ("processes", f"{facts['world_size']} ({strategy})"),
        ("learning rate", f"{t.lr:g}, cosine to {t.min_lr_ratio:g} x, warm-up {warmup}"),
        ("optimizer", f"AdamW, betas {tuple(t.adam_betas)}, eps {t.adam_eps:g}, weight decay {t.weight_decay:g}"),
        ("gradient clipping", f"{t.max_grad_norm}"), ("precision", facts["precision"]),
        ("saved as", facts["save_dtype"]),
        ("seed", str(t.seed)),
    ]
    return ["## Training", "", "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in settings), ""]


def _results_section(facts: dict) -> list[str]:
    summary, final = facts["summary"], facts["eval"]
    lines = ["## Results", "",
             f"Train loss {_num(summary.get('first_loss'))} at the first step, {_num(summary.get('last_loss'))} at "
             f"the last; eval loss {_num(final.get(keys.EVAL_LOSS))} (mean per response token)."]
    for kind, title in ((keys.CATEGORY, "category"), (keys.LANGUAGE, "language")):
        part = {k.removeprefix(keys.EVAL_LOSS + kind): v for k, v in final.items() if k.startswith(keys.EVAL_LOSS + kind)}
        if part:
            lines += ["", f"| eval loss by {title} | " + " | ".join(part) + " |", "|---" * (len(part) + 1) + "|",
                      "| | " + " | ".join(_num(v) for v in part.values()) + " |"]
    return lines + [""]


def _usage_section(adapter: bool) -> list[str]:
    load = ("from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(path)"
            if adapter else "from transformers import AutoModelForCausalLM\n"
                            "model = AutoModelForCausalLM.from_pretrained(path)")
    return ["## Use", "", "```python", 'path = "path/to/this/directory"', "from transformers import AutoTokenizer", load,
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            'messages = [{"role": "user", "content": "日本で一番高い山は何ですか？", "category": "open_qa"}]',
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)",
            "out = model.generate(**ids, max_new_tokens=64)",
            "print(tokenizer.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))", "```",
            "", "or `bonsai generate PATH --prompt \"...\"`.", ""]


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"
