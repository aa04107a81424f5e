"""`bonsai env`: what a bug report starts with, as `accelerate env` and `trl env` do.

Versions come from the installed distributions' metadata (no import), so a missing or broken package is
a line, not a crash. Only torch (devices) and DeepSpeed's op builders (which kernels can be built here,
checked without building any) are imported. Secrets are never printed: for W&B and the Hugging Face hub
only whether a key is set and where it comes from.
"""

from __future__ import annotations

import contextlib
import io
import netrc
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from bonsai.version import package_version

PACKAGES = ("transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors", "pydantic")
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_", "SLURM_CONF",
            "SLURM_JOB_ID", "BONSAI_MAIN_ADDR")
COMMAND_TIMEOUT_S = 3.0


def installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run(command: list[str]) -> tuple[bool, str]:
    """(whether it worked, its first line of output or what went wrong). With a timeout: a SLURM client
    whose controller is unreachable can wait for minutes."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {COMMAND_TIMEOUT_S:.0f} s"
    except OSError as err:
        return False, str(err)
    if proc.returncode == 0:
        return True, (proc.stdout.strip().splitlines() or [""])[0].strip()
    return False, ((proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"])[-1].strip()


def _torch_lines() -> list[tuple[str, str]]:
    try:
        import torch
    except Exception as err:  # a broken install is what this report is for
        return [("torch", f"{installed('torch')} (import fails: {type(err).__name__}: {err})")]
    rows = [("torch", torch.__version__)]
    if torch.cuda.is_available():
        rows.append(("CUDA", f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                             f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"))
        if shutil.which("nvidia-smi"):
            _, driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
            rows.append(("NVIDIA driver", driver))
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                     f"compute capability {props.major}.{props.minor}, "
                                     f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    else:
        rows.append(("CUDA", f"not available (torch built with CUDA {torch.version.cuda})" if torch.version.cuda
                     else "not available (a CPU build of torch)"))
    rows.append(("CPU cores", _cpu_cores(torch.get_num_threads())))
    return rows


def _cpu_cores(torch_threads: int) -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f", {int(kib.split()[1]) / 2**20:.0f} GiB memory"
    return f"{usable} usable of {os.cpu_count()}{memory}; torch uses {torch_threads} thread(s)"


def _deepspeed_line() -> str:
    version = installed("deepspeed")
    if version == "not installed":
        return version
    # DeepSpeed logs to stdout while it picks an accelerator; this report is stdout, so keep it out.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from deepspeed.accelerator import get_accelerator
            from deepspeed.git_version_info import installed_ops
            from deepspeed.ops.op_builder.all_ops import ALL_OPS

            accelerator = get_accelerator()._name
            compatible = {name: builder.is_compatible(verbose=False) for name, builder in ALL_OPS.items()}
        except Exception as err:
            return f"{version} (import fails: {type(err).__name__}: {err})"
    prebuilt = sorted(name for name, built in installed_ops.items() if built)
    buildable = sorted(name for name, ok in compatible.items() if ok and name != "deepspeed_not_implemented")
    not_buildable = sorted(name for name, ok in compatible.items() if not ok)
    return (f"{version}, accelerator {accelerator}; ops prebuilt: {', '.join(prebuilt) or 'none'}; "
            f"can build (JIT): {', '.join(buildable) or 'none'}; cannot: {', '.join(not_buildable) or 'none'}")


def _wandb_line() -> str:
    version = installed("wandb")
    if version == "not installed":
        return version
    if os.environ.get("WANDB_API_KEY"):
        login = "logged in (WANDB_API_KEY is set)"
    else:
        # wandb keeps its key in the netrc file; read with the standard library, not wandb's private API.
        host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
        path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
        try:
            found = path.exists() and netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            found = None
        login = f"logged in ({path} has a key for {host})" if found else "not logged in (runs log offline)"
    mode = os.environ.get("WANDB_MODE")
    return f"{version}, {login}" + (f", WANDB_MODE={mode}" if mode else "")


def _hub_token() -> str:
    if os.environ.get("HF_TOKEN"):
        return "set (HF_TOKEN)"
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return f"set ({home / 'token'})" if (home / "token").exists() else "not set"


def _slurm_line() -> str:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return "sbatch not on PATH"
    ok, version = _run(["sbatch", "--version"])
    if not ok:
        return f"{sbatch} fails: {version}"
    _, controller = _run(["scontrol", "ping"])  # "Slurmctld(primary) at HOST is UP", or why not
    job = os.environ.get("SLURM_JOB_ID")
    return f"{version} ({sbatch}); controller: {controller}" + (f"; inside job {job}" if job else "")


def report_rows() -> list[tuple[str, str]]:
    rows = [("Bonsai", f"{package_version()} ({Path(__file__).parent})"),
            ("Platform", platform.platform()),
            ("Python", f"{platform.python_version()} ({sys.executable})")]
    rows += _torch_lines()
    rows += [(name, installed(name)) for name in PACKAGES]
    rows += [("DeepSpeed", _deepspeed_line()),
             ("wandb", _wandb_line()),
             ("Hugging Face token", _hub_token()),
             ("flash-attn", installed("flash-attn")),
             ("SLURM", _slurm_line())]
    rows += [(f"${name}", os.environ[name]) for name in ENV_VARS if name in os.environ]
    return rows


def report_text() -> str:
    """Markdown list, to paste into an issue as it is."""
    return "\n".join(f"- {name}: {value}" for name, value in report_rows())
