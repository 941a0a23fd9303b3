"""Small measurement helpers shared by the benchmarks and the tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def saved_activation_bytes(fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor], **kwargs) -> int:
    """Bytes autograd keeps between ``fn(*tensors, **kwargs)`` and its backward pass.

    Each storage counts once, and the storages of ``tensors[1:]`` (the parameters, by convention:
    ``tensors[0]`` is the input) are left out, so the figure is the activation memory alone.
    """
    params = {t.untyped_storage().data_ptr() for t in tensors[1:]}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*tensors, **kwargs)
    del out
    return sum(storages.values())
