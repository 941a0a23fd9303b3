"""``optimizer: muon``: torch's Muon on the hidden matrices, AdamW on everything else.

Muon (momentum whose update is orthogonalised by a Newton-Schulz iteration) learned the quick-start's
look-ups in fewer steps than AdamW (benchmarks/README.md). torch runs that iteration in bfloat16,
which a CPU without native bf16 emulates at a small fraction of its float32 speed (an AVX2-only CPU:
1/60 on a matmul), so where the run computes in float32 the iteration does too: the same quintic
iteration and coefficients as torch's, only the dtype differs (and, for matrices at least twice as
long as wide, the order of the products: :func:`_newton_schulz_gram`). The swap is made for the
duration of Muon's step only; it relies on ``torch.optim._muon`` (torch pinned in constraints.txt),
and tests/test_muon.py checks the result against torch's own iteration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.optim import _muon

from ovis.train.config import TrainConfig


def muon_matrices(model: nn.Module) -> set[int]:
    """Ids of the parameters ``optimizer: muon`` gives Muon: the 2-D weights of hidden layers.
    Tables (every ``nn.Embedding``: token embeddings, the VTE, position tables) and the output layer
    (often tied to a table; the visual head, which scores the visual vocabulary) stay with AdamW, as
    Muon's authors advise for output layers; so do vectors and the 4-D patch convolution."""
    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for m in model.modules():
        get_output = getattr(m, "get_output_embeddings", None)
        output = get_output() if callable(get_output) else None
        if isinstance(output, nn.Module):
            tables |= {id(p) for p in output.parameters()}
        # The visual head scores the visual vocabulary: an output layer too (and with Ovis2's merge,
        # its Newton-Schulz iteration cost more than the rest of Muon's step together).
        output_layers = getattr(m, "output_layers", None)
        for layer in output_layers() if callable(output_layers) else ():
            tables |= {id(p) for p in layer.parameters()}
    return {id(p) for p in model.parameters() if p.ndim == 2 and id(p) not in tables}


def newton_schulz(
    grad: torch.Tensor,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Muon's orthogonalisation of a 2-D ``grad`` (approximately ``U V^T`` of its SVD), in ``dtype``."""
    a, b, c = ns_coefficients
    wide = grad.size(0) <= grad.size(1)
    x = grad.to(dtype) if wide else grad.to(dtype).T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    m, n = x.shape
    if dtype in (torch.float32, torch.float64) and n >= 2 * m and ns_steps > 0:
        x = _newton_schulz_gram(x, a, b, c, ns_steps)
    else:
        for _ in range(ns_steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def _newton_schulz_gram(x: torch.Tensor, a: float, b: float, c: float, steps: int) -> torch.Tensor:
    """The same iteration for a ``m x n`` ``x`` with ``n >= 2m``, run on ``m x m`` matrices only.

    Each step multiplies ``x`` on the left by ``q = a + b G + c G^2`` (``G = x x^T``), a polynomial
    in the first ``G``; all of them commute, so the next Gram matrix is ``q G q`` and the result is
    the product of the ``q``s times the first ``x``. Per step that is 4 ``m^3`` multiply-adds against
    ``2 m^2 n + m^3``: on the quick-start's 128 x 512 MLP matrices 45 ms of Muon's 60 a step (the
    plain form where ``x`` is near square). It keeps a little less precision: on an ill-conditioned
    matrix it lands within 3e-5 of the float64 iteration (the plain float32 one 1e-6, torch's bfloat16
    one ~1e-2); so it runs in float32 and float64 only (tests/test_muon.py).
    """
    gram = x @ x.T
    eye = torch.eye(gram.size(0), dtype=gram.dtype, device=gram.device)
    product = None
    for _ in range(steps):
        q = torch.addmm(a * eye + b * gram, gram, gram, alpha=c)
        product = q if product is None else q @ product
        gram = q @ (gram @ q)
    return product @ x


@contextmanager
def _newton_schulz_in(dtype: torch.dtype) -> Iterator[None]:
    if dtype == torch.bfloat16:  # torch's own
        yield
        return
    original = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = lambda grad, coefficients, steps, eps: newton_schulz(
        grad, coefficients, steps, eps, dtype
    )
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


class MuonWithAdamW(torch.optim.Optimizer):
    """``optimizer: muon``: torch's Muon on the parameters in ``muon_ids``, AdamW on the rest, seen
    by the schedule and the trainer as one optimizer. Each incoming group is split in two; the
    halves' dicts are shared with the two inner optimizers, so the schedule's rates reach them."""

    def __init__(
        self,
        groups: list[dict[str, Any]],
        muon_ids: set[int],
        config: TrainConfig,
        *,
        newton_schulz_bf16: bool,
        **adamw: Any,
    ) -> None:
        self.newton_schulz_bf16 = newton_schulz_bf16
        adam_groups, muon_groups = [], []
        for group in groups:
            for use_muon, target in ((False, adam_groups), (True, muon_groups)):
                params = [p for p in group["params"] if (id(p) in muon_ids) is use_muon]
                if not params:
                    continue
                half = {**group, "params": params}
                if use_muon:  # the group's rate in the same ratio to lr, at muon_lr
                    half["lr"] = config.muon_lr * (group["lr"] / config.lr if config.lr else 1.0)
                    half["name"] = f"{group.get('name', 'group')}.muon"
                target.append(half)
        self.adamw = (
            torch.optim.AdamW(
                adam_groups,
                lr=config.lr,
                betas=config.adam_betas,
                eps=config.adam_eps,
                weight_decay=config.weight_decay,
                **adamw,
            )
            if adam_groups
            else None
        )
        self.muon = (
            torch.optim.Muon(muon_groups, lr=config.muon_lr, weight_decay=config.weight_decay) if muon_groups else None
        )
        #: the inner optimizers by name (their state dicts' keys), AdamW first
        self.inner = {name: o for name, o in (("adamw", self.adamw), ("muon", self.muon)) if o is not None}
        super().__init__([p for o in self.inner.values() for g in o.param_groups for p in g["params"]], {})
        self._share_groups()

    def _share_groups(self) -> None:
        # AdamW's groups first: the trainer reads the base rate off the first group.
        self.param_groups = [g for o in self.inner.values() for g in o.param_groups]

    def step(self, closure: Any = None) -> None:
        for name, optimizer in self.inner.items():
            if name == "muon":
                with _newton_schulz_in(torch.bfloat16 if self.newton_schulz_bf16 else torch.float32):
                    optimizer.step()
            else:
                optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.inner.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.inner.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, optimizer in self.inner.items():
            optimizer.load_state_dict(state_dict[name])
        self._share_groups()  # loading gave the inner optimizers new group dicts
