"""The visual tokenizer: backbone patch features (merged ``s x s`` when ``hidden_stride`` > 1) ->
head logits -> per-token visual-word distributions (or, for the MLP adapter, projected features)."""

from __future__ import annotations

import math

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


def merge_patches(features: torch.Tensor, stride: int) -> torch.Tensor:
    """``[B, n*n, D]`` patch features -> ``[B, m*m, s*s*D]`` with ``m = ceil(n / s)``.

    The ``n x n`` grid is zero-padded at the bottom and right to a multiple of ``s``; each ``s x s``
    block becomes one token whose features are the block's patches concatenated row by row (patch
    ``(a, b)`` of the block at ``(a * s + b) * D``), blocks in row-major order: the Ovis 1.6 / Ovis2
    visual tokenizer's order (and transformers' ``Ovis2VisionModel``'s), so head weights carry over.
    """
    if stride == 1:
        return features
    batch, length, width = features.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"merging patches needs a square patch grid, got {length} patches")
    grid = features.reshape(batch, side, side, width)
    pad = -side % stride
    if pad:
        grid = F.pad(grid, (0, 0, 0, pad, 0, pad))
    blocks = (side + pad) // stride
    grid = grid.reshape(batch, blocks, stride, blocks, stride, width).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, blocks * blocks, stride * stride * width)


def structural_head(feature_dim: int, num_words: int) -> nn.Sequential:
    """``Linear(no bias) -> LayerNorm``: the paper's head (keys ``head.0`` / ``head.1``)."""
    return nn.Sequential(nn.Linear(feature_dim, num_words, bias=False), nn.LayerNorm(num_words))


def mlp_head(feature_dim: int, hidden_size: int) -> nn.Sequential:
    """LLaVA-1.5's two-layer projector, for the MLP-adapter ablation."""
    return nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))


class VisualTokenizer(nn.Module):
    """Backbone + head + tokenize function.

    ``forward`` gives, per view, the token distributions ``[B, N, V - I]`` (structural adapter; ``I``
    the indicator rows: 2 in the v1 layout, 5 tiled, 0 without indicators) or projected features
    ``[B, N, H]`` (MLP adapter). ``N`` is the patch count, or ``ceil(side / s)^2`` with
    ``hidden_stride`` s > 1, the head then taking ``s^2 x`` the backbone's width.
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
        num_indicators: int | None = None,
        hidden_stride: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.tokenize_function = tokenize_function
        self.tau = tau
        self.hidden_stride = hidden_stride
        width = backbone.feature_dim * hidden_stride * hidden_stride
        if adapter == "structural":
            indicators = (2 if use_indicators else 0) if num_indicators is None else num_indicators
            self.head = structural_head(width, visual_vocab_size - indicators)
        else:
            self.head = mlp_head(width, hidden_size)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The head's input ``[B, N, s^2 D]``: the backbone's patch features, merged ``s x s``."""
        features = self.backbone(pixel_values)
        expected = self.head[0].in_features // (self.hidden_stride * self.hidden_stride)
        if features.shape[-1] != expected:
            raise ValueError(
                f"vision backbone {self.backbone.spec.name!r} returned features of width "
                f"{features.shape[-1]}, but its spec (hidden_size) and so the head expect {expected}: "
                "fix hidden_size in the preset or the plugin's forward"
            )
        spec = self.backbone.spec
        if features.ndim != 3 or features.shape[1] != self.backbone.num_patches:
            raise ValueError(
                f"vision backbone {spec.name!r} returned features of shape {list(features.shape)}, but its "
                f"spec implies [images, {self.backbone.num_patches}, {features.shape[-1]}]: one feature per "
                f"patch, (image_size {spec.image_size} / patch_size {spec.patch_size})^2 patches, without "
                "class or register tokens (a plugin's forward drops them)"
            )
        return merge_patches(features, self.hidden_stride)

    def output_layers(self) -> list[nn.Module]:
        """The layers that score the visual vocabulary (the structural head's ``Linear``): an output
        layer, as an LM head is, which optimisers such as Muon treat apart from hidden layers."""
        return [self.head[0]] if self.adapter == "structural" else []

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.logits(pixel_values)
        if self.adapter == "mlp":
            return out
        return tokenize(out, self.tokenize_function, self.tau)
