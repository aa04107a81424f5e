"""The project files Bonsai ships besides its code (launch configs, DeepSpeed configs, example configs,
the sbatch template, the sample data): found in a checkout, or in a wheel's `bonsai/_shipped/`
(setup.py copies them there), and written into a new project by `bonsai init DIR`."""

from __future__ import annotations

import shutil
from pathlib import Path

# Directory (relative to the repository root) -> the files of it that ship.
SHIPPED = {"configs": "*.yaml", "launch": "*.yaml", "ds_configs": "*.json", "slurm": "train.sbatch",
           "data/sample": "*.jsonl"}
PACKAGED = "_shipped"


def shipped_root() -> Path:
    """Where the shipped files are: the checkout this module runs from, else the installed package's copy."""
    here = Path(__file__).resolve().parent
    checkout = here.parent
    if (checkout / "pyproject.toml").is_file() and all((checkout / d).is_dir() for d in SHIPPED):
        return checkout
    if (here / PACKAGED).is_dir():
        return here / PACKAGED
    raise FileNotFoundError(f"Bonsai's project files are neither in a checkout ({checkout}) nor in the package "
                            f"({here / PACKAGED}); reinstall Bonsai from its wheel or a checkout")


def shipped_files(root: Path | None = None) -> list[str]:
    """The shipped files' paths relative to `root` (default: shipped_root()), sorted."""
    root = root or shipped_root()
    return sorted(str(p.relative_to(root)) for d, pattern in SHIPPED.items() for p in (root / d).glob(pattern))


def shipped_file(relative: str) -> Path:
    return shipped_root() / relative


def project_file(relative: str) -> Path:
    """A project's own copy of a shipped file (the working directory's, as `bonsai init` wrote it and the
    user may have edited it), else the shipped one."""
    own = Path.cwd() / relative
    return own if own.is_file() else shipped_file(relative)


def init_project(directory: Path) -> list[str]:
    """Write a ready project into `directory` (new or empty): the shipped files and a README. Returns
    the files written, relative to it."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty directory; choose a new one")
    root = shipped_root()
    written = shipped_files(root)
    for relative in written:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
    (directory / "README.md").write_text(PROJECT_README, encoding="utf-8")
    return [*written, "README.md"]


PROJECT_README = """# A Bonsai project

Written by `bonsai init`. Run every command from this directory (configs name `data/sample`,
launch files name `ds_configs/`, relative to it).

```bash
WANDB_MODE=offline bonsai train configs/demo.yaml          # tiny Phi on the sample data, CPU, ~2 min
bonsai report runs/demo                                    # loss curve, events, suspect records
bonsai generate runs/demo/model --prompt "日本で一番高い山は何ですか？"
accelerate launch --config_file launch/ddp.yaml --num_processes 2 -m bonsai.cli train configs/demo.yaml train.output_dir=runs/demo-ddp
accelerate launch --config_file launch/zero3.yaml -m bonsai.cli train configs/phi2_lora.yaml
bonsai slurm submit configs/phi2_lora.yaml --nodes 2 --gpus-per-node 8 --launch launch/zero3.yaml
```

- `configs/`: training configs (`demo.yaml`: tiny model, CPU; `phi2_lora.yaml`, `phi2_full.yaml`: Phi-2).
- `launch/`: Accelerate configs (DDP, ZeRO-1/2/3, offload, multi-node); `ds_configs/`: their DeepSpeed JSONs.
- `slurm/train.sbatch`: the batch script `bonsai slurm submit` fills in (edit it here to change it).
- `data/sample/`: 302 sample records (seven categories, Japanese, English, Chinese).

Put your data in `data/` and point `data.path` at it; `bonsai data audit data/yours` checks it first.
"""
