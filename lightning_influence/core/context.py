"""The autograd context influence code owns: grad on, no autocast, modules in eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["analysis_context", "eval_mode", "unfused_attention"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own previous mode afterwards.

    ``model.train(flag)`` would set all submodules alike; users freeze parts of a model by
    keeping some submodules in eval mode, so each submodule's flag is restored individually.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """Attention through its plain (math) kernels, whose derivatives torch has in every mode.

    The fused kernels (CPU flash attention, the ``nn.TransformerEncoderLayer`` fast path) have no
    forward-mode derivative and no double backward, so HVPs and JVPs through them fail. The
    global switches are restored afterwards.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextlib.contextmanager
def analysis_context(model: nn.Module) -> Iterator[None]:
    """Grad enabled, inference mode and autocast off, ``model`` in eval mode, attention unfused.

    Lightning hooks run under ``no_grad`` (validation) or ``inference_mode`` (standalone
    validate), and mixed-precision training runs under autocast; HVPs need none of those, and
    need attention kernels with second-order derivatives (``unfused_attention``).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(unfused_attention())
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for device_type in ("cpu", "cuda"):
            if device_type == "cuda" and not torch.cuda.is_available():
                continue
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        stack.enter_context(eval_mode(model))
        yield
