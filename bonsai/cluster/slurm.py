"""SLURM: `bonsai slurm submit` renders slurm/train.sbatch for a config and submits it; the batch script
calls `python -m bonsai.cluster.slurm job-env` to learn where to rendezvous.

The batch script owns the job's life (signals, requeue); this module only answers questions that need
SLURM's view of the job: the main node's address, a free port, the end time. Nothing here imports torch.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bonsai.config import BonsaiConfig, ConfigError, load_config
from bonsai.shipped import project_file

TEMPLATE = "slurm/train.sbatch"  # the project's own copy (bonsai init writes it), else the shipped one
SCONTROL_TIMEOUT_S = 30
# Below Linux's ephemeral range (32768-60999), so no client socket of another job sits on them.
PORT_BASE, PORT_SPAN = 20000, 12000
_BLOCK = r"(# >>> {name}[^\n]*\n)(.*?)(# <<< {name}\n)"
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")
LOG_NAME = "slurm-%j.log"  # in the run dir; SLURM puts the job id for %j


class SlurmError(RuntimeError):
    pass


@dataclass
class SubmitOptions:
    nodes: int
    gpus_per_node: int
    procs_per_node: int | None = None  # default: one per GPU
    partition: str | None = None
    time: str | None = None  # SLURM's formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    launch_config: str | None = None  # an Accelerate config from launch/, e.g. launch/zero3.yaml
    grace_s: int = 300  # SLURM signals the job this long before its time limit
    max_restarts: int = 20
    cpus_per_task: int | None = None  # default: one core per process
    job_name: str | None = None
    sbatch_args: list[str] = field(default_factory=list)

    @property
    def processes_per_node(self) -> int:
        return self.procs_per_node if self.procs_per_node is not None else self.gpus_per_node


def time_limit_seconds(text: str) -> int:
    """SLURM's --time formats; a bare number is minutes."""
    if not _TIME.match(text):
        raise ConfigError(f"--time {text!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    weights = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
    return sum(p * w for p, w in zip(parts, weights))


def check_options(opts: SubmitOptions, cfg: BonsaiConfig) -> None:
    """Everything that would otherwise fail minutes later, in the queue or on the nodes."""
    if opts.nodes < 1:
        raise ConfigError(f"--nodes {opts.nodes}: need at least 1")
    if opts.gpus_per_node < 0:
        raise ConfigError(f"--gpus-per-node {opts.gpus_per_node}: cannot be negative")
    if opts.processes_per_node < 1:
        raise ConfigError("--gpus-per-node 0 (a CPU-only job) needs --procs-per-node N")
    if opts.launch_config and not Path(opts.launch_config).is_file():
        raise ConfigError(f"--launch {opts.launch_config}: no such file (the shipped ones are in launch/)")
    if opts.time is not None and time_limit_seconds(opts.time) <= opts.grace_s:
        raise ConfigError(f"--time {opts.time} is not longer than --grace {opts.grace_s} s: the job would be "
                          f"told to stop as it starts")
    cfg.check_world_size(opts.nodes * opts.processes_per_node)


def render(template: str, opts: SubmitOptions, run_dir: Path, workdir: Path) -> str:
    """The template with its two marked blocks replaced by this job's sbatch options and settings."""
    sbatch = [
        f"--job-name={opts.job_name or 'bonsai-' + run_dir.name}",
        f"--nodes={opts.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={opts.cpus_per_task or opts.processes_per_node}",
        f"--output={run_dir / LOG_NAME}",
        "--open-mode=append",
        f"--signal=B:USR1@{opts.grace_s}",
        "--requeue",
        f"--chdir={workdir}",
    ]
    if opts.gpus_per_node:
        sbatch.insert(3, f"--gpus-per-node={opts.gpus_per_node}")
    if opts.partition:
        sbatch.append(f"--partition={opts.partition}")
    if opts.time:
        sbatch.append(f"--time={opts.time}")
    sbatch += opts.sbatch_args
    python = Path(sys.executable)
    settings = {
        "PYTHON": str(python),
        "PROCS_PER_NODE": str(opts.processes_per_node),
        "LAUNCH_CONFIG": str(Path(opts.launch_config).resolve()) if opts.launch_config else "",
        "MAX_RESTARTS": str(opts.max_restarts),
    }
    settings_lines = [f"{k}={shlex.quote(v)}" for k, v in settings.items()]
    # With --export=NONE a job starts with an empty PATH; this is the submitter's, the venv's bin first.
    path = os.pathsep.join([str(python.parent), os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    settings_lines.append(f"export PATH={shlex.quote(path)}")
    text = _replace_block(template, "sbatch options", "".join(f"#SBATCH {a}\n" for a in sbatch))
    return _replace_block(text, "settings", "".join(line + "\n" for line in settings_lines))


def _replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(_BLOCK.format(name=re.escape(name)), re.DOTALL)
    if not pattern.search(text):
        raise SlurmError(f"the sbatch template has no '# >>> {name}' ... '# <<< {name}' block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


@dataclass
class Submission:
    job_id: str | None  # None for a dry run
    script: str  # the rendered batch script
    command: list[str]  # the sbatch command line
    run_dir: Path

    @property
    def log(self) -> Path:
        return self.run_dir / LOG_NAME.replace("%j", self.job_id or "JOBID")


def submit(config: str, overrides: list[str], opts: SubmitOptions, dry_run: bool = False,
           template: Path | None = None) -> Submission:
    cfg = load_config(config, overrides)
    check_options(opts, cfg)
    template = template or project_file(TEMPLATE)
    if not template.is_file():
        raise SlurmError(f"sbatch template {template} not found (`bonsai init DIR` writes one into a new project)")
    run_dir = Path(cfg.train.output_dir).resolve()
    script = render(template.read_text(encoding="utf-8"), opts, run_dir, Path.cwd())
    rendered = run_dir / "slurm" / "train.sbatch"
    command = ["sbatch", "--parsable", str(rendered), str(Path(config).resolve()), *overrides]
    if dry_run:
        return Submission(None, script, command, run_dir)
    rendered.parent.mkdir(parents=True, exist_ok=True)  # the log goes to run_dir: it must exist first
    rendered.write_text(script, encoding="utf-8")
    job_id = _run(command).stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    return Submission(job_id, script, command, run_dir)


# --- inside the job -------------------------------------------------------------------------------

def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
    except FileNotFoundError as err:
        raise SlurmError(f"{command[0]} not found: is this a SLURM login node (or is SLURM's bin dir on PATH)?") from err
    except subprocess.TimeoutExpired as err:
        raise SlurmError(f"{' '.join(command)} did not answer in {SCONTROL_TIMEOUT_S} s: is slurmctld up?") from err
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _fields(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", text))


def node_address(node: str) -> str:
    """What SLURM itself uses to reach a node: NodeAddr, which may differ from the (unresolvable) name."""
    return _fields(_run(["scontrol", "show", "node", "-o", node]).stdout).get("NodeAddr") or node


def _resolve(host: str) -> str:
    return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def main_address(nodelist: str) -> str:
    """An IPv4 address of the job's first node (machine rank 0) that the other nodes can connect to."""
    if os.environ.get("BONSAI_MAIN_ADDR"):
        return os.environ["BONSAI_MAIN_ADDR"]
    names = _run(["scontrol", "show", "hostnames", nodelist]).stdout.split()
    if not names:
        raise SlurmError(f"scontrol found no hosts in the node list {nodelist!r}")
    addr = node_address(names[0])
    try:
        ip = _resolve(addr)
    except socket.gaierror as err:
        raise SlurmError(f"node {names[0]}: its address {addr!r} does not resolve ({err}); "
                         f"set BONSAI_MAIN_ADDR to an address of {names[0]} the other nodes can reach") from err
    if ipaddress.ip_address(ip).is_loopback and len(names) > 1:
        # /etc/hosts often maps a host's own name to 127.0.1.1: fine alone, unreachable from other hosts.
        others = {_resolve(node_address(n)) for n in names[1:]}
        if not all(ipaddress.ip_address(o).is_loopback for o in others):
            raise SlurmError(f"node {names[0]} resolves to {ip} (loopback) but other nodes are at {sorted(others)}; "
                             f"set BONSAI_MAIN_ADDR to an address of {names[0]} they can reach")
    return ip


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def job_port(job_id: int, restart: int, is_free=_port_free) -> int:
    """A rendezvous port for this job run: spread by job id so concurrent jobs on a node do not share
    one, moved on by the restart count so a requeued run does not meet its predecessor's socket, and
    checked free on this (the main) node."""
    start = (job_id * 10 + restart) % PORT_SPAN
    for i in range(200):
        port = PORT_BASE + (start + i) % PORT_SPAN
        if is_free(port):
            return port
    raise SlurmError(f"no free port among 200 from {PORT_BASE + start}")


def job_deadline(job_id: str) -> float | None:
    """The job's end time in epoch seconds, or None when it has no time limit."""
    info = _fields(_run(["scontrol", "show", "job", "-o", job_id]).stdout)
    if info.get("TimeLimit", "UNLIMITED") in ("UNLIMITED", "Partition_Limit") or info.get("EndTime") in (None, "Unknown"):
        return None
    return datetime.fromisoformat(info["EndTime"]).timestamp()  # local time, as scontrol prints it


def job_env(config: str, overrides: list[str]) -> dict[str, str]:
    for var in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        if var not in os.environ:
            raise SlurmError(f"{var} is not set: `job-env` runs inside a SLURM job (slurm/train.sbatch)")
    cfg = load_config(config, overrides)
    job_id = os.environ["SLURM_JOB_ID"]
    deadline = job_deadline(job_id)
    return {
        "RUN_DIR": str(Path(cfg.train.output_dir).resolve()),
        "MAIN_ADDR": main_address(os.environ["SLURM_JOB_NODELIST"]),
        "PORT": str(job_port(int(job_id), int(os.environ.get("SLURM_RESTART_COUNT", "0")))),
        "DEADLINE": "" if deadline is None else f"{deadline:.0f}",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] != "job-env":
        print("usage: python -m bonsai.cluster.slurm job-env CONFIG [section.key=value ...]  (inside a SLURM job)",
              file=sys.stderr)
        return 2
    try:
        values = job_env(argv[1], argv[2:])
    except (SlurmError, ConfigError, OSError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(f"{k}={shlex.quote(v)}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
