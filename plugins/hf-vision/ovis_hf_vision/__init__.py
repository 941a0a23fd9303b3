"""Ovis plugin: CLIP and SigLIP vision towers from Hugging Face transformers."""

from ovis_hf_vision.clip import HFCLIPVision
from ovis_hf_vision.siglip import HFSiglipVision

__all__ = ["HFCLIPVision", "HFSiglipVision"]
