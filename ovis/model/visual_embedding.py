"""The visual embedding table (VTE): visual words -> LLM embeddings, as text ids index the LLM's
own table."""

from __future__ import annotations

import torch
from torch import nn


class VisualEmbedding(nn.Embedding):
    """An embedding table that also takes probability distributions.

    Integer input looks rows up; floating input ``[..., V]`` is a weighted sum ``x @ weight``.
    The dtype check (not a device-specific type check) works the same on CPU and CUDA.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            return super().forward(x)
        return torch.matmul(x.to(self.weight.dtype), self.weight)

    def embed_distributions(self, probs: torch.Tensor, use_indicators: bool) -> torch.Tensor:
        """``[B, N, V']`` distributions -> ``[B, N (+2), H]`` embeddings with indicator rows.

        Same result as padding the distributions with zero columns and prepending/appending
        one-hot rows for ids V-2/V-1 (the v1 formulation), without materialising those rows.
        """
        words = probs.shape[-1]
        body = torch.matmul(probs.to(self.weight.dtype), self.weight[:words])
        if not use_indicators:
            return body
        return wrap_with_indicators(body, self.weight[-2], self.weight[-1])


def wrap_with_indicators(body: torch.Tensor, begin: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``[B, N, H]`` -> ``[B, N + 2, H]`` with ``begin`` first and ``end`` last in every block."""
    batch = body.shape[0]
    return torch.cat([begin.expand(batch, 1, -1), body, end.expand(batch, 1, -1)], dim=1)
