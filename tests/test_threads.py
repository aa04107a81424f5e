"""Each process takes its share of the cores; a launcher's OMP_NUM_THREADS=1 does not leave cores idle."""

import json
import os
import subprocess
import sys

from conftest import ROOT

CASES = """
import json, os, torch
from bonsai.train.distributed import set_cpu_threads
cores = len(os.sched_getaffinity(0))
seen = {}
for name, env, requested in [
    ("bare", {}, None),
    ("bare, OMP_NUM_THREADS=1 exported", {"OMP_NUM_THREADS": "1"}, None),
    ("torchrun, 2 local processes", {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}, None),
    ("accelerate, 1 process", {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "False"}, None),
    ("pinned", {"LOCAL_WORLD_SIZE": "2"}, 3),
]:
    for key in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "ACCELERATE_USE_CPU"):
        os.environ.pop(key, None)
    os.environ.update(env)
    torch.set_num_threads(1 if "OMP_NUM_THREADS" in env else cores)  # what the process would start with
    line = set_cpu_threads(requested)
    seen[name] = [torch.get_num_threads(), line]
print(json.dumps({"cores": cores, "seen": seen}))
"""


def test_threads_are_the_share_of_the_cores_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", CASES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cores, seen = result["cores"], result["seen"]
    assert seen["bare"][0] == cores
    assert seen["bare, OMP_NUM_THREADS=1 exported"] == [1, "threads: 1 per process (OMP_NUM_THREADS)"]
    assert seen["torchrun, 2 local processes"][0] == max(1, cores // 2)
    assert seen["accelerate, 1 process"][0] == cores
    assert seen["pinned"] == [3, "threads: 3 per process (distributed.threads_per_process)"]
