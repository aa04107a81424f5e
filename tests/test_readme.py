"""The commands of the README and of the documentation (docs/, in the order of the site's navigation),
run as written, in order, in one scratch copy of the checkout: a page that drifts from the code turns
this red.

Every line of every ```bash block runs, except the ones SKIPPED names (with the reason and where that
path is tested instead), and a command that already ran earlier (the same command after substitution,
e.g. `make demo` in the README and in Getting started). A 2-core CPU without a GPU, a cluster or the
network forces the substitutions in CPU_SUBSTITUTIONS, applied in order to each line; FIXTURES are the
input files a command assumes the user already has. Both tables are the documentation of what differs
from a GPU box."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, subprocess_env

VENV = Path(sys.executable).parent.parent

# (pattern, replacement, why). Applied to every command line, in this order.
CPU_SUBSTITUTIONS = [
    (r"^make (demo|docs)\b", rf"make \1 VENV={VENV} -o {VENV}/.installed",
     "use the venv this suite runs in, as it is: never reinstall it from the scratch copy"),
    (r"(?<![\w/])\.venv/", f"{VENV}/", "the same venv"),
    (r"accelerate launch (.*?)--num_processes \d+ ", r"accelerate launch \1", "2 cores: 2 processes (added below)"),
    (r"accelerate launch ", "accelerate launch --num_processes 2 ", "2 cores: 2 processes"),
    (r"(train configs/phi2_\w+\.yaml[^#]*?)(\s*(#.*)?)$",
     r"\1 model.name_or_path=tiny-phi data.max_length=128 train.max_steps=3 eval.decode.max_new_tokens=16\2",
     "no hub and no GPU: Phi-2's shape and 2048-token rows are the tiny model and 128 tokens; 3 steps"),
    (r"data\.path=/shared/sft/", "data.path=data/sample", "no shared storage: the sample data"),
    (r"(\s)/shared/", r"\1shared/", "no shared storage: a directory of the scratch copy"),
    (r"\s*\[--push-to-hub [^\]]*\]", "", "optional (shown in brackets), and pushing needs the network"),
    (r"^(bonsai slurm submit (?!.*--dry-run).*?)(\s*(#.*)?)$", r"\1 --dry-run\2",
     "no GPU cluster here: check and render the job; tests/test_slurm.py submits to a real local cluster"),
]

# A line that matches is not run: (pattern, why, where that path is tested).
SKIPPED = [
    (r"^make test\b", "this suite itself"),
    (r"local_cluster\.sh|^export SLURM_CONF|^squeue|^scancel|^tail -f|--procs-per-node 1 train\.max_steps=400",
     "needs root and SLURM daemons; tests/test_slurm.py runs exactly this sequence on a local two-node cluster"),
    (r"bench/[\w/]*\.py\b|pip install", "benchmarks run for minutes; bench/RESULTS.md records their figures and commands"),
    (r"WANDB_API_KEY=|^wandb (login|sync)\b",
     "needs a W&B account and the network; runs here log offline, and tests/test_training.py reads that run back"),
]

ALPACA = [{"instruction": f"Name a colour ({i}).", "input": "", "output": f"Blue is colour number {i}."} for i in range(20)]
DOLLY = [{"instruction": f"Write a joke about {i}.", "context": "", "response": f"Number {i} walked into a bar.",
          "category": "humor"} for i in range(20)]
CHATS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Count to {i}."},
                        {"role": "assistant", "content": f"One to {i}."}]} for i in range(20)]
FIXTURES = {  # files the data commands (docs/how-to/your-data.md) assume the user has
    "alpaca_data.json": json.dumps(ALPACA),
    "dolly.jsonl": "".join(json.dumps(r) + "\n" for r in DOLLY),
    "chats.jsonl": "".join(json.dumps(r) + "\n" for r in CHATS),
}


def shell_commands(text: str) -> list[str]:
    """Every command of a page's ```bash blocks; continuation lines joined, comment lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+", " ", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def as_run_here(command: str) -> str | None:
    """The command with the CPU substitutions applied, or None if it is skipped."""
    if any(re.search(pattern, command) for pattern, _ in SKIPPED):
        return None
    for pattern, replacement, _ in CPU_SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml's own tags (`!relative`) read as nothing: only its nav is wanted here."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def doc_pages() -> list[str]:
    """The README, then every page of the site in the order of its navigation (a reader's order)."""
    def pages(nav) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        items = nav.values() if isinstance(nav, dict) else nav
        return [page for item in items for page in pages(item)]

    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags)
    return ["README.md", *(f"docs/{page}" for page in pages(config["nav"]))]


PAGES = doc_pages()
COMMANDS = [(page, command) for page in PAGES for command in shell_commands((ROOT / page).read_text(encoding="utf-8"))]


def ran_before(index: int) -> str | None:
    """The page that already runs this command earlier, if one does (the same after substitution, its
    trailing comment aside)."""
    def bare(command: str) -> str | None:
        command = as_run_here(command)
        return command and re.sub(r"\s+#[^\"']*$", "", command)

    command = bare(COMMANDS[index][1])
    return next((page for page, earlier in COMMANDS[:index] if command and bare(earlier) == command), None)


def test_the_pages_have_commands_and_every_skip_says_why():
    readme = [command for page, command in COMMANDS if page == "README.md"]
    assert readme[0].startswith("make demo") and readme[1].startswith("make test")
    assert {page for page, _ in COMMANDS} >= {"README.md", "docs/getting-started.md", "docs/how-to/your-data.md"}
    assert len(COMMANDS) > 30
    ran = [i for i, (_, command) in enumerate(COMMANDS) if as_run_here(command) is not None and not ran_before(i)]
    assert len(ran) >= 20, "the training, data, generation, eval and export commands must run here"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The tracked files of the checkout, mtimes kept (so make sees the venv as up to date)."""
    root = tmp_path_factory.mktemp("readme") / "bonsai"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, tracked):
        source = ROOT / name.decode()
        if source.is_file():
            (root / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name.decode())
    for name, content in FIXTURES.items():
        (root / name).write_text(content, encoding="utf-8")
    return root


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{page}: {c[:50]}" for page, c in COMMANDS])
def test_command_runs(scratch, index):
    page, written = COMMANDS[index]
    command = as_run_here(written)
    if command is None:
        pytest.skip(next(why for pattern, why in SKIPPED if re.search(pattern, written)))
    if earlier := ran_before(index):
        pytest.skip(f"ran already: {earlier} runs the same command earlier")
    env = subprocess_env() | {"PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"$ {command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
