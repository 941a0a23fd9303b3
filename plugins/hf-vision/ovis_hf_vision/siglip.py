"""SigLIP vision tower via transformers ``SiglipVisionModel`` (builder ``hf-siglip-vision``).

No CLS token: every position is a patch (729 for so400m/14 at 384 px).
"""

from __future__ import annotations

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from ovis_hf_vision.base import HFVisionBackbone


class HFSiglipVision(HFVisionBackbone):
    config_class = SiglipVisionConfig
    model_class = SiglipVisionModel
    num_prefix_tokens = 0

    def _last_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # SiglipVisionModel's own output is post_layernorm'd and runs the pooling head; the
        # features are the encoder output before both, so call the two parts directly.
        hidden = self.vision_model.embeddings(pixel_values)
        return self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state
