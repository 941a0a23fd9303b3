"""What the transformers vision towers (CLIP, SigLIP, SigLIP2, AIMv2) share: building,
checkpointing and blocks.

The transformers model (``CLIPVisionModel``, ``SiglipVisionModel``, ...) is held as ``vision_model``,
so state-dict keys read ``vision_model.embeddings...``, ``vision_model.encoder.layers.N...``: the
layout of the released Ovis checkpoints (under ``visual_tokenizer.backbone.``).

Features are the output of the last encoder layer, before the final norm, without the CLS token
(what Ovis v1 took from CLIP, Ovis 1.6 from SigLIP and Ovis2 from AIMv2: ``hidden_states[-1]``).
"""

from __future__ import annotations

import functools
from abc import abstractmethod

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel

from ovis.interfaces import VisionBackbone, VisionSpec


class HFVisionBackbone(VisionBackbone):
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    num_prefix_tokens: int = 0

    def __init__(self, spec: VisionSpec, vision_model: PreTrainedModel) -> None:
        super().__init__(spec)
        self.vision_model = vision_model
        self._check_against_spec()

    @classmethod
    def from_spec(cls, spec: VisionSpec, *, pretrained: bool = True):
        if pretrained:
            if not spec.weights:
                raise ValueError(f"vision preset {spec.name!r} has no weights; use pretrained=False")
            # A hub id or a local directory; a full CLIP/SigLIP checkpoint (text tower included)
            # loads too: transformers keeps the vision weights.
            model = cls.model_class.from_pretrained(spec.weights, dtype=torch.float32)
        else:
            model = cls.model_class(cls.config_class(**spec.architecture))
        return cls(spec, model)

    def _model_sizes(self) -> dict[str, object]:
        """The spec's size fields as the built model has them (a subclass whose config lacks one
        leaves it out)."""
        config = self.vision_model.config
        return {
            "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers,
            "num_heads": config.num_attention_heads,
            "patch_size": config.patch_size,
            "image_size": config.image_size,
            "has_cls_token": self.num_prefix_tokens > 0,
        }

    def _check_against_spec(self) -> None:
        actual = self._model_sizes()
        wrong = {k: v for k, v in actual.items() if getattr(self.spec, k) != v}
        if wrong:
            details = "; ".join(f"{k}: spec {getattr(self.spec, k)}, model {v}" for k, v in wrong.items())
            raise ValueError(f"vision preset {self.spec.name!r} does not match its model: {details}")

    @abstractmethod
    def _last_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The last encoder layer's output, before the final norm, prefix tokens included."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.vision_model.get_input_embeddings().weight.dtype
        hidden = self._last_hidden_state(pixel_values.to(dtype))
        return hidden[:, self.num_prefix_tokens :]

    def blocks(self) -> nn.ModuleList:
        return self.vision_model.encoder.layers

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        # transformers' layers recompute themselves when their `gradient_checkpointing` flag is
        # set (in training mode); set it directly so this works across transformers 5.x names.
        func = functools.partial(checkpoint, use_reentrant=False)
        for module in self.vision_model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module._gradient_checkpointing_func = func
                module.gradient_checkpointing = enabled
