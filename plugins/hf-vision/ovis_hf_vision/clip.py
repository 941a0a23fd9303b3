"""OpenAI CLIP vision tower via transformers ``CLIPVisionModel`` (builder ``hf-clip-vision``).

The Ovis v1 backbone: 576 patch features of width 1024 for ViT-L/14 at 336 px.
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from ovis_hf_vision.base import HFVisionBackbone


class HFCLIPVision(HFVisionBackbone):
    config_class = CLIPVisionConfig
    model_class = CLIPVisionModel
    num_prefix_tokens = 1  # the CLS token

    def _last_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # CLIP's last_hidden_state is taken before post_layernorm.
        return self.vision_model(pixel_values=pixel_values).last_hidden_state
