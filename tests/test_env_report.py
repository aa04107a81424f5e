"""`bonsai env`, run for real: what a bug report starts with. It names the installed versions and the
devices, says whether W&B and the hub have a key without ever printing one, and stays a report (never a
crash, never a hang) when a package is broken or `sbatch` does not answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import metadata

from conftest import ROOT, subprocess_env

from bonsai.env_report import COMMAND_TIMEOUT_S

SECRETS = {"WANDB_API_KEY": "wandb-key-do-not-print-0123456789", "HF_TOKEN": "hf_token_do_not_print_9876543210"}


def bonsai_env(env: dict) -> tuple[subprocess.CompletedProcess, float]:
    begun = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bonsai.cli", "env"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.monotonic() - begun


def fields(stdout: str) -> dict[str, str]:
    """The report's `- name: value` lines as a dict."""
    return dict(line[2:].split(": ", 1) for line in stdout.splitlines() if line.startswith("- "))


def test_it_names_versions_and_devices_and_never_a_secret(tmp_path):
    # An sbatch that hangs, as a client whose controller is unreachable can: the report must not wait for it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nsleep 60\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = subprocess_env() | SECRETS | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc, seconds = bonsai_env(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for secret in SECRETS.values():
        assert secret not in proc.stdout + proc.stderr
    report = fields(proc.stdout)
    assert report["torch"] == metadata.version("torch")
    for name in ("transformers", "accelerate", "peft"):
        assert report[name] == metadata.version(name)
    assert report["DeepSpeed"].startswith(metadata.version("deepspeed") + ", accelerator ")
    assert "can build (JIT): " in report["DeepSpeed"]
    assert report["wandb"] == f"{metadata.version('wandb')}, logged in (WANDB_API_KEY is set), WANDB_MODE=offline"
    assert report["Hugging Face token"] == "set (HF_TOKEN)"
    assert report["SLURM"] == f"{bin_dir / 'sbatch'} fails: no answer within {COMMAND_TIMEOUT_S:.0f} s"
    assert seconds < 60, f"bonsai env waited {seconds:.0f} s: the hanging sbatch was not cut off"
    import torch

    if torch.cuda.is_available():
        assert report["GPU 0"].startswith(torch.cuda.get_device_name(0))
    else:
        assert report["CPU cores"].startswith(f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}")


def test_a_broken_package_and_a_netrc_key_are_lines_not_crashes(tmp_path):
    # A DeepSpeed that fails to import (a half-upgraded install) shadows the real one; its metadata stays.
    broken = tmp_path / "site" / "deepspeed"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password netrc-key-do-not-print-42\n")
    netrc.chmod(0o600)
    # An sbatch without a cluster configuration fails at once; the report says why, in its words.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: fatal: Could not establish a configuration source' >&2\n"
                                    "exit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = subprocess_env() | {"PYTHONPATH": os.pathsep.join([str(broken.parent), str(ROOT)]), "NETRC": str(netrc),
                              "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "HF_TOKEN")}
    proc, _ = bonsai_env(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = fields(proc.stdout)
    assert report["DeepSpeed"] == f"{metadata.version('deepspeed')} (import fails: ImportError: broken on purpose)"
    assert report["wandb"] == f"{metadata.version('wandb')}, logged in ({netrc} has a key for api.wandb.ai)"
    assert "netrc-key-do-not-print-42" not in proc.stdout + proc.stderr
    assert report["SLURM"] == f"{bin_dir / 'sbatch'} fails: sbatch: fatal: Could not establish a configuration source"
    try:
        flash_attn = metadata.version("flash-attn")
    except metadata.PackageNotFoundError:
        flash_attn = "not installed"
    assert report["flash-attn"] == flash_attn
