"""Ovis plugin: image towers of open_clip models (native ViTs and timm-based SigLIP towers).

The entry point is :mod:`ovis_open_clip.plugin`; the backbone classes live in their own modules and are
imported only when a model is built (so that listing plugins does not import torch).
"""

__version__ = "0.1.0"
