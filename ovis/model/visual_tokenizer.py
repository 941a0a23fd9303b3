"""The visual tokenizer: backbone patch features -> head logits -> per-patch visual-word
distributions (or, for the MLP adapter, projected features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovis.interfaces import VisionBackbone

#: how head logits become a distribution over visual words (the paper's three choices)
TOKENIZE_FUNCTIONS = ("softmax", "gumbel_argmax", "st_argmax")


def st_argmax(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax in the forward pass, softmax gradient in the backward pass."""
    soft = logits.softmax(dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def tokenize(logits: torch.Tensor, function: str, tau: float) -> torch.Tensor:
    if function == "softmax":
        return logits.softmax(dim=-1)
    if function == "gumbel_argmax":
        return F.gumbel_softmax(logits, tau=tau, hard=True)
    if function == "st_argmax":
        return st_argmax(logits)
    raise ValueError(f"unknown tokenize function {function!r}")


def structural_head(feature_dim: int, num_words: int) -> nn.Sequential:
    """``Linear(no bias) -> LayerNorm``: the paper's head (keys ``head.0`` / ``head.1``)."""
    return nn.Sequential(nn.Linear(feature_dim, num_words, bias=False), nn.LayerNorm(num_words))


def mlp_head(feature_dim: int, hidden_size: int) -> nn.Sequential:
    """LLaVA-1.5's two-layer projector, for the MLP-adapter ablation."""
    return nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))


class VisualTokenizer(nn.Module):
    """Backbone + head + tokenize function.

    ``forward`` gives, per image, the patch distributions ``[B, N, V - 2]`` (structural adapter;
    ``V`` when there are no indicators) or projected features ``[B, N, H]`` (MLP adapter).
    """

    def __init__(
        self,
        backbone: VisionBackbone,
        *,
        adapter: str,
        visual_vocab_size: int,
        hidden_size: int,
        use_indicators: bool,
        tokenize_function: str = "softmax",
        tau: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.tokenize_function = tokenize_function
        self.tau = tau
        if adapter == "structural":
            words = visual_vocab_size - (2 if use_indicators else 0)
            self.head = structural_head(backbone.feature_dim, words)
        else:
            self.head = mlp_head(backbone.feature_dim, hidden_size)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's patch features ``[B, N, D]``, checked against the head's width."""
        features = self.backbone(pixel_values)
        expected = self.head[0].in_features
        if features.shape[-1] != expected:
            raise ValueError(
                f"vision backbone {self.backbone.spec.name!r} returned features of width "
                f"{features.shape[-1]}, but its spec (hidden_size) and so the head expect {expected}: "
                "fix hidden_size in the preset or the plugin's forward"
            )
        return features

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.logits(pixel_values)
        if self.adapter == "mlp":
            return out
        return tokenize(out, self.tokenize_function, self.tau)
