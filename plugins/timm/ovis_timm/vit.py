"""A timm ``VisionTransformer`` (builder ``timm-vit``).

``spec.architecture`` is ``model_name`` (a timm architecture, without a pretrained tag) plus any
keyword overrides for ``timm.create_model`` (``depth``, ``embed_dim``, ``img_size``,
``act_layer``...). The model is built with ``num_classes=0`` and held as ``trunk``. Features are
the last block's output before the final norm, prefix (CLS/register) tokens dropped.

``spec.weights``: a timm pretrained tag of ``model_name`` (``openai``, ``webli``...), or a local
file with a timm state dict (loaded through timm with ``pretrained_cfg_overlay=dict(file=...)``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ovis.interfaces import VisionBackbone, VisionSpec


class TimmViT(VisionBackbone):
    def __init__(self, spec: VisionSpec, trunk: nn.Module) -> None:
        super().__init__(spec)
        self.trunk = trunk
        self._check_against_spec()

    @classmethod
    def from_spec(cls, spec: VisionSpec, *, pretrained: bool = True) -> TimmViT:
        overrides = dict(spec.architecture)
        name = overrides.pop("model_name")
        if not pretrained:
            return cls(spec, timm.create_model(name, pretrained=False, num_classes=0, **overrides))
        if not spec.weights:
            raise ValueError(f"vision preset {spec.name!r} has no weights; use pretrained=False")
        local = Path(spec.weights).expanduser()
        if local.is_file():
            overrides["pretrained_cfg_overlay"] = {"file": str(local)}
        else:
            name = f"{name.split('.')[0]}.{spec.weights}"
        return cls(spec, timm.create_model(name, pretrained=True, num_classes=0, **overrides))

    def _check_against_spec(self) -> None:
        grid = self.spec.image_size // self.spec.patch_size
        actual = {
            "num_layers": len(self.trunk.blocks),
            "hidden_size": self.trunk.num_features,
            "patch grid": tuple(self.trunk.patch_embed.grid_size),
            "has_cls_token": self.trunk.cls_token is not None,
        }
        expected = {
            "num_layers": self.spec.num_layers,
            "hidden_size": self.spec.hidden_size,
            "patch grid": (grid, grid),
            "has_cls_token": self.spec.has_cls_token,
        }
        wrong = [f"{k}: spec {expected[k]}, model {v}" for k, v in actual.items() if expected[k] != v]
        if wrong:
            details = "; ".join(wrong)
            raise ValueError(f"vision preset {self.spec.name!r} does not match its model: {details}")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.trunk.patch_embed.proj.weight.dtype
        (last,) = self.trunk.forward_intermediates(
            pixel_values.to(dtype), indices=1, norm=False, output_fmt="NLC", intermediates_only=True
        )
        return last

    def blocks(self) -> nn.ModuleList:
        return nn.ModuleList(self.trunk.blocks)  # a view of timm's nn.Sequential

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enabled)
