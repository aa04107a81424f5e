"""Regional compilation (`train.compile`): each decoder layer's forward through torch.compile.

Per layer, as torchtitan and torchtune do, not the whole model: the layers are alike, so dynamo compiles
one graph and every layer runs it (it passes a layer's parameters as graph inputs instead of guarding on the
layer), and a first compile costs one layer's time whatever the depth. What surrounds the layers (the
embedding, the loss head, Bonsai's per-record bookkeeping) stays eager.

The layer's `forward`, not the module's call: hooks that a strategy puts on the layer (FSDP2's gathers,
DeepSpeed's) run around the compiled code as they do around the eager one, instead of being traced.

Packed attention (`sdpa_varlen`) stays eager: its documents differ in number and length from batch to batch
(Python lists, data-dependent shapes), and a graph of it would be recompiled for nearly every batch. The
layer is then compiled in two pieces around it (before and after the attention). The dense-mask `sdpa`
compiles whole.

Shapes: packed rows are padded to data.max_length, so one shape serves the whole run. Unpacked rows are as
long as their batch's longest: their length is compiled as a dynamic dimension from the start (a graph per
length would recompile at nearly every step).

Generation (probes, eval's answers) runs eagerly: every new token is a new length and a new cache state.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_ours: set[str] = set()  # cache dirs this process put into the environment (one per run it trained)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks (Phi's PhiDecoderLayer; any *DecoderLayer), inside any wrapper."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_layers(model, dynamic_length: bool, cache_dir: Path) -> int:
    """Compile every decoder layer's forward in place (the module, its parameters and its state-dict keys
    stay as they are). Returns how many layers. `cache_dir`: inductor's cache of compiled code, unless
    TORCHINDUCTOR_CACHE_DIR names one: in the run dir, a resume on any node of the cluster finds what the
    first start compiled (torch's default is /tmp of the node that compiled)."""
    os.environ[CACHE_ENV] = _users_cache_dir() or str(cache_dir)
    if os.environ[CACHE_ENV] == str(cache_dir):
        _ours.add(str(cache_dir))
    layers = decoder_layers(model)
    # The default limit (8 graphs per code object) is below Phi-2's 32 layers, should guards ever tell
    # the layers apart; past it the rest would silently run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(layers))
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True if dynamic_length else None)
    return len(layers)


def _users_cache_dir() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR where the user set it. Inductor writes its /tmp default into the environment
    the first time anything in the process asks for its cache (DeepSpeed's import can), and an earlier run
    in this process (tests) wrote its own: neither is a choice."""
    from torch._inductor.runtime.runtime_utils import default_cache_dir

    value = os.environ.get(CACHE_ENV)
    if value is None or value in _ours or os.path.abspath(value) == os.path.abspath(default_cache_dir()):
        return None
    return value


@contextmanager
def eager():
    """Compiled code runs eagerly inside (generation: a new length and cache state at every token)."""
    with torch.compiler.set_stance("force_eager"):
        yield


@dataclass(frozen=True)
class CompileCount:
    """What compiling has cost this process so far: graphs built and seconds (dynamo's own timers:
    tracing and inductor for the forward, and the backward's compile on its first call)."""

    graphs: int
    seconds: float


def compile_count() -> CompileCount:
    from torch._dynamo.utils import compilation_time_metrics, counters

    timed = ("_compile.compile_inner", "backward._backward_impl")
    seconds = sum(sum(compilation_time_metrics.get(name, [])) for name in timed)
    return CompileCount(int(counters["stats"]["unique_graphs"]), seconds)
