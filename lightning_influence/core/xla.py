"""torch-xla specifics; torch_xla itself is imported only when a tensor lives on an XLA device.

torch-xla records operations lazily and compiles each distinct graph once; a loop runs at full
speed only when every iteration cuts the same graph. ``sync`` is that cut for the Arnoldi loop, and
``graph_cut(device)`` hands it to ``arnoldi`` on XLA devices (None elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["graph_cut", "sync"]


def sync(tensors: Sequence[Tensor] | None = None) -> None:
    """Run the pending graph of ``tensors`` (default: of every live XLA tensor) and wait for it.

    A plain ``torch_xla.sync()`` also materializes every other live tensor with pending work,
    including intermediates of the last HVP that ``torch.func``'s reference cycles keep alive
    until Python's garbage collector happens to run: the graph then varies from iteration to
    iteration with the collector's timing, and each variant compiles anew. Syncing only the
    tensors the loop carries on keeps one graph per iteration.
    """
    import torch_xla

    # torch-xla has no public call that syncs only some tensors (see above).
    sync_multi = getattr(torch_xla._XLAC, "_xla_sync_multi", None)  # noqa: SLF001
    if tensors is not None and sync_multi is not None:
        lazy = [t for t in tensors if t.device.type == "xla"]  # a CPU basis needs no sync
        if lazy:
            sync_multi(lazy, devices=[], wait=True)
        return
    step = getattr(torch_xla, "sync", None)
    if step is None:  # torch-xla < 2.5
        import torch_xla.core.xla_model as xm

        step = xm.mark_step
    step()


def graph_cut(device: torch.device) -> Callable[[list[Tensor]], None] | None:
    """``sync`` on an XLA device (``arnoldi``'s ``graph_cut``), None elsewhere."""
    return sync if device.type == "xla" else None
