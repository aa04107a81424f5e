"""DeepSpeed's compiled CPU ops live in the virtual environment that built them, so two environments on one
machine (a checkout and a fresh clone) do not rebuild them in turn inside each other's runs."""

import os
import subprocess
import sys

from conftest import ROOT

PROBE = "from bonsai.train.distributed import use_environment_op_cache as f; print(f()); import os; " \
        "print(os.environ['TORCH_EXTENSIONS_DIR'])"


def _probe(env: dict) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout.split()


def test_ops_are_built_into_the_environment_unless_the_user_chose_a_directory(tmp_path):
    assert sys.prefix != sys.base_prefix, "the suite runs in a virtual environment (make test)"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    inside = os.path.join(sys.prefix, "torch_extensions")
    assert _probe(env) == [inside, inside]
    assert _probe(env | {"TORCH_EXTENSIONS_DIR": str(tmp_path)}) == ["None", str(tmp_path)]
