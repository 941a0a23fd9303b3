"""Ovis plugin: CLIP, SigLIP, SigLIP2 and AIMv2 vision towers from Hugging Face transformers.

The entry point is :mod:`ovis_hf_vision.plugin`; the backbone classes live in their own modules and are
imported only when a model is built (so that listing plugins does not import torch).
"""

__version__ = "0.1.0"
