"""The abstract vision backbone every vision plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from ovis.interfaces.image import ImageProcessor
from ovis.interfaces.specs import VisionSpec

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only, so 3.10 (requires-python) imports fine


class VisionBackbone(nn.Module, ABC):
    """A ViT that turns preprocessed pixels into patch features ``[B, N, D]`` (no CLS token).

    Subclasses keep the wrapped encoder's own module names as attributes, so that state-dict keys
    stay those of the source library (e.g. ``vision_model.*`` for Hugging Face CLIP, which is what
    the released Ovis v1 checkpoints use).
    """

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        self.spec = spec

    # -- construction -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_spec(cls, spec: VisionSpec, *, pretrained: bool = True) -> Self:
        """Build the encoder. ``pretrained=False`` builds a random-initialised model from
        ``spec.architecture`` without touching the network; under ``torch.device("meta")`` it must
        allocate no memory. ``pretrained=True`` loads ``spec.weights`` (hub id, tag or directory)."""

    # -- the contract -------------------------------------------------------------------------
    @abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> ``[B, num_patches, feature_dim]``."""

    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, first to last."""

    @abstractmethod
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass instead of storing them."""

    # -- shared behaviour ---------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.spec.hidden_size

    @property
    def num_patches(self) -> int:
        return self.spec.num_patches

    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(self.spec.preprocess)

    def reinit_last_block(self) -> None:
        """Re-initialise the last transformer block (Ovis stage 1 trains it from scratch)."""
        last = self.blocks()[-1]
        touched = 0
        for module in last.modules():
            if module is last:
                continue
            # nn.MultiheadAttention resets its fused q/k/v weights in _reset_parameters.
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
                touched += 1
        if touched == 0:
            raise RuntimeError(f"{type(self).__name__}: the last block has no resettable layers")
