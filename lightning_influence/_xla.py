"""torch-xla specifics, imported only when a tensor lives on an XLA device."""

from __future__ import annotations

__all__: list[str] = []


def sync() -> None:
    """Cut the lazy graph and run it (``torch_xla.sync``; ``xm.mark_step`` before torch-xla 2.5)."""
    import torch_xla

    step = getattr(torch_xla, "sync", None)
    if step is None:
        import torch_xla.core.xla_model as xm

        step = xm.mark_step
    step()
