"""The Ovis model (config, visual tokenizer, visual embedding table, merging).

Importing this registers ``OvisConfig`` / ``OvisForCausalLM`` with transformers' Auto classes,
so ``AutoModelForCausalLM.from_pretrained(dir)`` works without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from ovis.model.configuration_ovis import OvisConfig
from ovis.model.merging import IGNORE_INDEX, IMAGE_TOKEN_ID, ImageCountError, merge_image_embeddings
from ovis.model.modeling_ovis import OvisForCausalLM, OvisPreTrainedModel
from ovis.model.visual_embedding import VisualEmbedding
from ovis.model.visual_tokenizer import VisualTokenizer

AutoConfig.register("ovis", OvisConfig, exist_ok=True)
AutoModelForCausalLM.register(OvisConfig, OvisForCausalLM, exist_ok=True)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_ID",
    "ImageCountError",
    "OvisConfig",
    "OvisForCausalLM",
    "OvisPreTrainedModel",
    "VisualEmbedding",
    "VisualTokenizer",
    "merge_image_embeddings",
]
