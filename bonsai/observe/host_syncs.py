"""Counting the points where the host waits for the device: a debugging instrument, never on in training.

On a GPU every read of a tensor's value on the host (`.item()`, `.tolist()`, `if tensor:`, `int(t)`) and
every op whose output size depends on the data (`nonzero`, boolean-mask indexing, `torch.equal`,
`masked_select`, `repeat_interleave` without an output size) blocks the Python thread until the GPU has
caught up; the next kernel launches only after that. CUDA's own check
(`torch.cuda.set_sync_debug_mode`) exists only on CUDA; this one runs anywhere, so the count is the
same on the CPU where the tests run: a dispatch mode sees every aten op, and `tolist` (which reads the
storage without an op) is counted at the Python level.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# Ops that read a value, or whose output shape depends on the values, of a device tensor.
SYNCING_OPS = {
    _aten._local_scalar_dense.default: "item",  # .item(), bool(t), int(t), float(t)
    _aten.nonzero.default: "nonzero",
    _aten.equal.default: "equal",
    _aten.masked_select.default: "masked_select",
    _aten.repeat_interleave.Tensor: "repeat_interleave",
    _aten.is_nonzero.default: "item",
}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])


class HostSyncCounter(TorchDispatchMode):
    """Within `with HostSyncCounter() as syncs:`, `syncs.counts` holds the host syncs seen, by kind
    (item, tolist, nonzero, bool_index, equal, ...), and `syncs.total` their number."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._tolist = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = SYNCING_OPS.get(func)
        if kind is None and func in (_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default) \
                and _bool_index(args):
            kind = "bool_index"  # a boolean mask becomes indices (nonzero) inside the kernel
        if kind:
            self.counts[kind] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        original = self._tolist = torch.Tensor.tolist
        counts = self.counts

        def tolist(tensor):
            counts["tolist"] += 1
            return original(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)
