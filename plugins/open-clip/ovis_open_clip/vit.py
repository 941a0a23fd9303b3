"""The image tower of an open_clip model (builder ``open_clip``).

``spec.architecture`` holds the open_clip model config minus the text tower::

    model_name: ViT-L-14-336     # open_clip config name, used with pretrained tags (optional)
    embed_dim: 768               # the CLIP embedding width (size of the unused projection)
    quick_gelu: true
    vision_cfg: {image_size: 336, layers: 24, width: 1024, patch_size: 14}

so any size (tiny ones included) builds offline without registering a config with open_clip.
The tower is held as ``visual``: state-dict keys are those of the ``visual.*`` half of an
open_clip checkpoint. Features are the last block's output before ``ln_post``/pooling/projection,
prefix (CLS) tokens dropped.

``spec.weights``: an open_clip pretrained tag (``openai``, ``webli``) for ``model_name``, an
``hf-hub:``/``local-dir:`` open_clip name, or a local state-dict file (``.safetensors`` or a torch
file, loaded with ``weights_only``) holding a full open_clip checkpoint or just the tower.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from open_clip.model import _build_vision_tower  # what create_model uses for the image half
from safetensors.torch import load_file
from torch import nn

from ovis.interfaces import VisionBackbone, VisionSpec

_SCHEMAS = ("hf-hub:", "local-dir:")


class OpenCLIPVision(VisionBackbone):
    def __init__(self, spec: VisionSpec, visual: nn.Module) -> None:
        super().__init__(spec)
        self.visual = visual
        self._check_against_spec()

    @classmethod
    def from_spec(cls, spec: VisionSpec, *, pretrained: bool = True) -> OpenCLIPVision:
        arch = spec.architecture
        if not pretrained:
            quick_gelu = arch.get("quick_gelu", False)
            return cls(spec, _build_vision_tower(arch["embed_dim"], dict(arch["vision_cfg"]), quick_gelu))
        weights = spec.weights
        if not weights:
            raise ValueError(f"vision preset {spec.name!r} has no weights; use pretrained=False")
        if Path(weights).expanduser().is_file():
            model = cls.from_spec(spec, pretrained=False)
            model.load_state_dict(_tower_state_dict(Path(weights).expanduser()))
            return model
        if weights.startswith(_SCHEMAS):
            clip = open_clip.create_model(weights)
        else:
            if not arch.get("model_name"):
                raise ValueError(f"vision preset {spec.name!r}: a pretrained tag needs a model_name")
            clip = open_clip.create_model(
                arch["model_name"],
                pretrained=weights,
                force_quick_gelu=arch.get("quick_gelu", False),
                embed_dim=arch["embed_dim"],
                vision_cfg=dict(arch["vision_cfg"]),
            )
        return cls(spec, clip.visual.float())

    def _is_timm(self) -> bool:
        return hasattr(self.visual, "trunk")

    def _check_against_spec(self) -> None:
        if self._is_timm():
            trunk = self.visual.trunk
            width, grid = trunk.num_features, trunk.patch_embed.grid_size
            has_cls = trunk.cls_token is not None
        else:
            width, grid, has_cls = self.visual.transformer.width, self.visual.grid_size, True
        side = self.spec.image_size // self.spec.patch_size
        actual = {"num_layers": len(self.blocks()), "hidden_size": width, "patch grid": tuple(grid),
                  "has_cls_token": has_cls}
        expected = {"num_layers": self.spec.num_layers, "hidden_size": self.spec.hidden_size,
                    "patch grid": (side, side), "has_cls_token": self.spec.has_cls_token}
        wrong = [f"{k}: spec {expected[k]}, model {v}" for k, v in actual.items() if expected[k] != v]
        if wrong:
            details = "; ".join(wrong)
            raise ValueError(f"vision preset {self.spec.name!r} does not match its model: {details}")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.visual.parameters()).dtype
        out = self.visual.forward_intermediates(
            pixel_values.to(dtype), indices=1, intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"][-1]

    def blocks(self) -> nn.ModuleList:
        if self._is_timm():
            return nn.ModuleList(self.visual.trunk.blocks)  # a view of timm's nn.Sequential
        return self.visual.transformer.resblocks

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.visual.set_grad_checkpointing(enabled)

    def reinit_last_block(self) -> None:
        super().reinit_last_block()
        # nn.MultiheadAttention keeps its fused qkv projection outside any reset_parameters().
        for module in self.blocks()[-1].modules():
            if isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()


def _tower_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("visual.")}
    return {f"visual.{k}": v for k, v in state.items()}  # a bare tower state dict
