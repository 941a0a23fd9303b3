"""Google SigLIP2 NaFlex vision tower via transformers ``Siglip2VisionModel`` (builder
``hf-siglip2-vision``), used at one fixed square resolution.

NaFlex takes pixels already cut into patches (``[B, N, 3 * P * P]``, each patch row-major with
the channels last), a ``pixel_attention_mask`` marking real patches and ``spatial_shapes`` (the
patch grid of each image); its position table (``num_patches`` = a square grid) is resized to
that grid. Here every image is the same ``image_size`` square, so the grid is
``image_size // patch_size`` on both sides, every patch is real (no mask needed) and the encoder
sees what ``Siglip2VisionModel`` would for that input. The fixed-resolution SigLIP2 checkpoints
(``google/siglip2-*-patch16-512`` ...) are SigLIP-architecture models: use ``hf-siglip-vision``.

Features are the encoder output before ``post_layernorm`` and the pooling head, no CLS token.
"""

from __future__ import annotations

import torch
from transformers import Siglip2VisionConfig, Siglip2VisionModel

from ovis_hf_vision.base import HFVisionBackbone


def to_patches(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H//P) * (W//P), P * P * C]`` in NaFlex's order (patch rows
    then columns; inside a patch, pixel rows, pixel columns, then channels). A remainder of the
    image beyond a whole patch is dropped, as a patch convolution would."""
    b, c, h, w = pixel_values.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixel_values[:, :, : gh * patch_size, : gw * patch_size]
    x = x.reshape(b, c, gh, patch_size, gw, patch_size).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


class HFSiglip2Vision(HFVisionBackbone):
    config_class = Siglip2VisionConfig
    model_class = Siglip2VisionModel
    num_prefix_tokens = 0

    def _model_sizes(self) -> dict[str, object]:
        config = self.vision_model.config
        # NaFlex has no fixed image size: the spec's image_size is the resolution used here.
        return {
            "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers,
            "num_heads": config.num_attention_heads,
            "patch_size": config.patch_size,
            "has_cls_token": False,
        }

    def _last_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patch = self.spec.patch_size
        patches = to_patches(pixel_values, patch)
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        # The grid is index data that transformers checks with .item(): keep it off the meta device.
        device = "cpu" if pixel_values.is_meta else pixel_values.device
        shapes = torch.tensor([grid], dtype=torch.long, device=device).expand(len(patches), 2)
        hidden = self.vision_model.embeddings(patches, shapes)
        # All patches are real: no attention mask (the same as an all-ones pixel_attention_mask).
        return self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state
