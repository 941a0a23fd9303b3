"""A minimal ViT in plain PyTorch, as a third party might bring its own encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ovis.interfaces import VisionBackbone, VisionSpec

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only, so 3.10 imports this module too


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ExampleViT(VisionBackbone):
    """Patch embedding + pre-norm transformer blocks; no CLS token."""

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__(spec)
        width, patch = spec.hidden_size, spec.patch_size
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches, width))
        self.layers = nn.ModuleList(Block(width, spec.num_heads) for _ in range(spec.num_layers))
        self.norm = nn.LayerNorm(width)
        self.checkpointing = False
        nn.init.normal_(self.pos_embed, std=0.02)

    @classmethod
    def from_spec(cls, spec: VisionSpec, *, pretrained: bool = True) -> Self:
        model = cls(spec)
        if pretrained and spec.weights:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(spec.weights))
        return model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.pos_embed
        for layer in self.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.norm(x)

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.checkpointing = enabled
