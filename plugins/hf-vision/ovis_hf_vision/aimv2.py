"""Apple AIMv2 vision encoder via transformers ``Aimv2VisionModel`` (builder ``hf-aimv2-vision``).

The Ovis2 backbone (aimv2-large / huge / 1B, patch 14 at 448 px: 1024 patch features). No CLS
token; RMSNorm everywhere and a SwiGLU MLP. The released vision encoders have no pooling head
(``use_head: false``): their checkpoints (vision-only, ``Aimv2VisionModel``) hold the patch
embedding, positions, blocks and a final norm only.

Features are the last block's output *before* the final RMSNorm, what the Ovis2 release takes
(``hidden_states[-1]`` of its AIMv2 trunk, whose ``post_trunk_norm`` is stored but not applied).
transformers' own ``Ovis2VisionModel`` applies that norm; :meth:`HFAimv2Vision.final_norm` gives it
for anyone converting to that layout; a spec whose ``architecture`` sets ``apply_final_norm: true``
(what ``ovis convert --from hf-ovis2`` writes) applies it, as that model does.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Aimv2VisionConfig, Aimv2VisionModel
from transformers.models.aimv2.modeling_aimv2 import Aimv2RMSNorm

from ovis_hf_vision.base import HFVisionBackbone


class HFAimv2Vision(HFVisionBackbone):
    config_class = Aimv2VisionConfig
    model_class = Aimv2VisionModel
    num_prefix_tokens = 0

    def _last_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Aimv2VisionModel's last_hidden_state is rms_norm'd; take the encoder output directly.
        hidden = self.vision_model.embeddings(pixel_values)
        hidden = self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state
        if getattr(self.vision_model.config, "apply_final_norm", False):
            hidden = self.vision_model.rms_norm(hidden)
        return hidden

    def reinit_last_block(self) -> None:
        super().reinit_last_block()
        # transformers' RMSNorm has no reset_parameters: set its gain back to 1, as its init does.
        for module in self.blocks()[-1].modules():
            if isinstance(module, Aimv2RMSNorm):
                nn.init.ones_(module.weight)

    @property
    def final_norm(self) -> nn.Module:
        """The trunk's final RMSNorm (not applied to the features)."""
        return self.vision_model.rms_norm
