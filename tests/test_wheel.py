"""Installed from its wheel, outside any checkout, Bonsai does its main jobs: `bonsai init` writes a
project from which the README's commands run (the demo, a SLURM dry run, a 2-process accelerate launch).

The wheel is built from this tree and installed without its dependencies into a fresh venv; the
dependencies come from this suite's venv through a path file (a plain path: that venv's own editable
Bonsai is not activated), so nothing is downloaded."""

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT, free_port, subprocess_env

IGNORED = shutil.ignore_patterns(".venv", ".git", "runs", ".cache", "build", "*.egg-info", "__pycache__", "wandb",
                                 ".pytest_cache", ".ruff_cache", "eval", "audit")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with Bonsai installed from a wheel of this tree; returns its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, work / "src", ignore=IGNORED)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", str(work / "src"),
                            "-w", str(work / "dist")], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((work / "dist").glob("bonsai-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True, timeout=120)
    python = work / "venv" / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(site) / "suite_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return work / "venv" / "bin"


def _run(command: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in subprocess_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_the_wheel_carries_the_project_files_and_init_writes_a_working_project(installed, tmp_path):
    where = _run([installed / "python", "-c", "import bonsai.cli, bonsai.shipped as s; print(bonsai.cli.__file__); "
                  "print(s.shipped_root())"], tmp_path).stdout.split()
    assert all(str(ROOT) not in line for line in where), where  # the wheel's code and files, not this checkout's
    assert where[1].endswith("bonsai/_shipped")

    _run([installed / "bonsai", "init", "proj"], tmp_path)
    project = tmp_path / "proj"
    for name in ("configs/demo.yaml", "configs/phi2_lora.yaml", "launch/zero3.yaml", "ds_configs/zero3.json",
                 "slurm/train.sbatch", "data/sample/part-00000.jsonl", "README.md"):
        assert (project / name).is_file(), name
    refused = subprocess.run([installed / "bonsai", "init", "proj"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "not an empty directory" in refused.stderr

    # The demo, shortened to 6 steps (CPU time), exactly as the project's README runs it otherwise.
    _run([installed / "bonsai", "train", "configs/demo.yaml", "train.max_steps=6", "train.warmup_steps=2",
          "train.checkpoint_every=0", "eval.every_steps=0"], project)
    assert (project / "runs/demo/model/model.safetensors").is_file()
    assert (project / "runs/demo/model/README.md").is_file()

    dry = _run([installed / "bonsai", "slurm", "submit", "configs/demo.yaml", "--nodes", "1", "--gpus-per-node", "1",
                "--dry-run"], project)
    assert "#SBATCH --nodes=1" in dry.stdout and "sbatch --parsable" in dry.stdout

    launch = _run([installed / "python", "-m", "accelerate.commands.launch", "--config_file", "launch/ddp.yaml",
                   "--num_processes", "2", "--main_process_port", free_port(), "-m", "bonsai.cli", "train",
                   "configs/demo.yaml", "train.output_dir=runs/demo-ddp", "train.max_steps=4", "train.warmup_steps=1",
                   "train.checkpoint_every=0", "eval.every_steps=0", "eval.probes=null"], project)
    assert "2 process(es)" in launch.stdout and (project / "runs/demo-ddp/model/model.safetensors").is_file()
