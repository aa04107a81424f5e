"""Writes docs/reference/*.md from the code, so the reference cannot drift from it: the config keys from
the pydantic models (bonsai/config.py), the commands and options from the argparse parsers (bonsai/cli.py),
the metric keys from bonsai/metric_keys.py and the exit codes from the CLI's error table.

    python docs/gen_reference.py [OUT_DIR]      # default: docs/reference

`make docs` runs it before building the site; tests/test_docs.py regenerates into a temporary directory
and fails when a committed page differs. Not part of the package: training never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: fixed here, the same everywhere

from bonsai import cli, metric_keys  # noqa: E402  (after the path and width are set)
from bonsai.config import MAY_CHANGE_ON_RESUME, BonsaiConfig  # noqa: E402
from bonsai.train.resume import preemption  # noqa: E402


def _header(source: str) -> str:
    return f"<!-- Generated from {source} by docs/gen_reference.py: edit the code, then run `make docs`. -->\n\n"


def _text(text: str) -> str:
    """Help text as Markdown: one line, and `<` `>` outside code spans escaped (`OUT/<arm>` is no HTML tag)."""
    spans = " ".join(str(text).split()).split("`")
    return "`".join(span if i % 2 else span.replace("<", "&lt;").replace(">", "&gt;") for i, span in enumerate(spans))


def _cell(text: str) -> str:
    """Help text inside a Markdown table cell. A "|" is escaped; inside a code span it is refused, as GitHub
    needs it escaped there and MkDocs would then show the backslash."""
    text = _text(text)
    for i, span in enumerate(text.split("`")):
        if i % 2 and "|" in span:
            raise ValueError(f"a '|' in the code span `{span}` of a table cell; reword it in the source: {text}")
    return text.replace("|", "\\|")


# --- config ---------------------------------------------------------------------------------------

def _type_text(annotation, limits: str = "") -> str:
    """`int, ≥ 1, or null`: the type, its limits, and whether null is allowed."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kinds = " or ".join(_type_text(a) for a in args if a is not type(None))
        return kinds + (f", {limits}" if limits else "") + (", or `null`" if type(None) in args else "")
    if limits:
        return f"{_type_text(annotation)}, {limits}"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    return annotation.__name__


def _constraints(metadata: list) -> str:
    words = {annotated_types.Ge: ("≥", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("≤", "le"),
             annotated_types.Lt: ("<", "lt")}
    parts = []
    for item in metadata:
        if type(item) in words:
            sign, attr = words[type(item)]
            parts.append(f"{sign} {getattr(item, attr)}")
        elif isinstance(item, annotated_types.MinLen):
            parts.append("not empty" if item.min_length == 1 else f"at least {item.min_length} long")
        else:
            raise TypeError(f"docs/gen_reference.py cannot describe the constraint {item!r}: teach _constraints")
    return ", ".join(parts)


def _default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    found = [(prefix, model)]
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _sections(field.annotation, f"{prefix}{name}.")
    return found


def config_page() -> str:
    lines = [_header("bonsai/config.py"), "# Configuration keys\n\n",
             "One YAML file with the sections below, validated once at load: an unknown key, a wrong type or an "
             "allowed value out of range stops the run naming the key (an unknown key comes with the nearest real "
             "one). Any key can be overridden on the command line as `section.key=value`, e.g. "
             "`bonsai train configs/demo.yaml train.lr=1e-4 --dry-run`.\n\n",
             "*Resume*: **may change** marks the keys a resumed run may change; changing any other key on resume is "
             "refused, naming it (see [elastic resume](../concepts/elastic-resume.md)).\n"]
    for prefix, model in _sections(BonsaiConfig, ""):
        if not prefix:
            continue
        doc = " ".join((model.__doc__ or "").split())
        if not doc:
            raise ValueError(f"bonsai/config.py: {model.__name__} ({prefix[:-1]}) has no docstring to describe it")
        lines.append(f"\n## `{prefix[:-1]}`\n\n{doc}\n\n")
        lines.append("| key | type | default | resume | description |\n|---|---|---|---|---|\n")
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                anchor = f"{prefix}{name}".replace(".", "")  # the heading's id, as MkDocs writes it
                lines.append(f"| `{prefix}{name}` | section | | | see [`{prefix}{name}`](#{anchor}) |\n")
                continue
            if not field.description:
                raise ValueError(f"bonsai/config.py: {prefix}{name} has no docstring to describe it")
            kind = _type_text(field.annotation, _constraints(field.metadata))
            resume = "may change" if f"{prefix}{name}".startswith(MAY_CHANGE_ON_RESUME) else ""
            lines.append(f"| `{prefix}{name}` | {_cell(kind)} | "
                         f"{_cell(_default_text(field))} | {resume} | {_cell(field.description)} |\n")
    return "".join(lines)


# --- CLI ------------------------------------------------------------------------------------------

def _argument_row(action: argparse.Action) -> str:
    value = f" {action.metavar or action.dest.upper()}" if action.option_strings and action.nargs != 0 else ""
    name = ", ".join(f"`{option}{value}`" for option in action.option_strings) or f"`{action.metavar or action.dest}`"
    notes = []
    if action.choices:
        notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        notes.append("required")
    if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
        notes.append(f"default `{action.default}`")
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        notes.append("repeatable" if isinstance(action, argparse._AppendAction) else "several")
    return f"| {_cell(name)} | {_cell(action.help or '')} | {_cell('; '.join(notes))} |\n"


def _command_sections(parser: argparse.ArgumentParser, helps: dict[str, str], commands: list[str]) -> list[str]:
    """A section per command, this one and those below it; `commands` gets their names, in order."""
    commands.append(parser.prog)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = [f"\n## `{parser.prog}`\n\n"]
    if parser.prog in helps:
        out.append(_text(f"{helps[parser.prog][0].upper()}{helps[parser.prog][1:]}."))
    if parser.description:
        out.append((" " if parser.prog in helps else "") + _text(parser.description))
    out.append(f"\n\n```text\n{parser.format_usage().strip()}\n```\n")
    rows = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if rows:
        out.append("\n| argument | meaning | values |\n|---|---|---|\n")
        out += [_argument_row(a) for a in rows]
    for sub in subs:
        for choice in sub._choices_actions:
            helps[f"{parser.prog} {choice.dest}"] = choice.help
        for child in sub.choices.values():
            out += _command_sections(child, helps, commands)
    return out


def cli_page() -> str:
    commands: list[str] = []
    body = _command_sections(cli._parser(), {}, commands)
    index = [f"- [`{name}`](#{name.replace(' ', '-')})\n" for name in commands[1:]]  # anchors as MkDocs writes them
    return "".join([_header("bonsai/cli.py"), "# Commands\n\n",
                    "Every `bonsai` command and option, as `bonsai COMMAND --help` prints them. Config overrides "
                    "(`section.key=value`) may come before or after the options.\n\n", *index, *body])


# --- metrics --------------------------------------------------------------------------------------

def metrics_page() -> str:
    described = metric_keys.DESCRIBED
    constants = {name: value for name, value in vars(metric_keys).items()  # the keys, not the suffixes
                 if name.isupper() and not name.startswith("_") and isinstance(value, str) and value[0] != "_"}
    missing = [name for name, value in constants.items()
               if value not in described and not any(k.startswith(f"{value}/") for k in described)]
    if missing:
        raise ValueError(f"bonsai/metric_keys.py: {', '.join(missing)} not in DESCRIBED; say when it is logged "
                         "and what it is")
    lines = [_header("bonsai/metric_keys.py"), "# Metric keys\n\n",
             "The names under which a run logs, the same in W&B and in `RUN_DIR/metrics.jsonl` (whose rows also "
             "carry `step` and `time`), in the convention of Hugging Face's Trainer and TRL: `train/...`, "
             "`eval/...`, and a breakdown as `<metric>" + metric_keys.CATEGORY + "<c>` (a category) or `<metric>"
             + metric_keys.LANGUAGE + "<l>` (a language). W&B also gets two tables, `events` (instability "
             "events) and `probes` (probe answers).\n\n",
             "| key | logged | meaning |\n|---|---|---|\n"]
    lines += [f"| `{key}` | {_cell(when)} | {_cell(what)} |\n" for key, (when, what) in described.items()]
    return "".join(lines)


# --- exit codes -----------------------------------------------------------------------------------

def exit_codes_page() -> str:
    errors = sorted(cli.train_exit_codes().items(), key=lambda item: item[1])
    for kind, _ in errors:
        if not kind.__doc__:
            raise ValueError(f"{kind.__module__}.{kind.__name__} has no docstring to say when it is raised")
    saved = os.environ.pop("TORCHELASTIC_RUN_ID", None)
    direct = preemption.preempted_exit_code()
    os.environ["TORCHELASTIC_RUN_ID"] = "docs"
    under_agent = preemption.preempted_exit_code()
    os.environ.pop("TORCHELASTIC_RUN_ID")
    if saved is not None:
        os.environ["TORCHELASTIC_RUN_ID"] = saved
    rows = [(0, "finished (or `--dry-run` printed the config)"),
            (1, "anything else: a bug, with its traceback (please [report it](../how-to/report-a-bug.md))"),
            (direct, "stopped on request (SIGTERM, SIGUSR1, the stop file, the job's end time near): the step "
                     "finished, a checkpoint was written and recorded in `RUN_DIR/stopped.json`; the next launch "
                     "resumes"),
            (preemption.EXIT_INTERRUPTED, "Ctrl-C: the same, after the step; a second Ctrl-C aborts at once"),
            *((code, f"`{kind.__name__}`: {kind.__doc__}") for kind, code in errors)]
    lines = [_header("bonsai/cli.py (train_exit_codes) and bonsai/train/resume/preemption.py"), "# Exit codes\n\n",
             "## `bonsai train`, run directly\n\n", "| code | outcome |\n|---|---|\n",
             *(f"| {code} | {_cell(text)} |\n" for code, text in sorted(rows, key=lambda row: row[0]))]
    lines += ["\nAn error you can fix is one line, `bonsai: error: ...`; `--debug` adds the traceback.\n\n",
              "## Under `accelerate launch` (torchrun's agent)\n\n",
              "The agent turns any non-zero code of a worker into its own 1 (with a `ChildFailedError` traceback), "
              "which a script cannot tell from a crash. So a stop on request exits "
              f"{under_agent} there, and `RUN_DIR/stopped.json` says it stopped with a complete checkpoint: "
              "`[ -f RUN_DIR/stopped.json ] && echo preempted` (what `slurm/train.sbatch` reads to requeue). "
              "Every other failure is 1.\n\n",
              "## Other commands\n\n",
              "0 when done; 2 with one line for an error you can fix (a missing file, a bad option, a bad record); "
              "`bonsai data audit` exits 1 when a finding reaches `--fail-on`, and `bonsai ablate` 1 when one of "
              "its trainings failed (its log says why). See [the commands](cli.md).\n"]
    return "".join(lines)


PAGES = {"config.md": config_page, "cli.md": cli_page, "metrics.md": metrics_page, "exit-codes.md": exit_codes_page}


def write_pages(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in PAGES.items():
        (out / name).write_text(build(), encoding="utf-8")
        written.append(out / name)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "reference"
    for path in write_pages(target):
        print(f"wrote {path}")
