"""Ovis plugin: image towers of open_clip models (native ViTs and timm-based SigLIP towers)."""

from ovis_open_clip.vit import OpenCLIPVision

__all__ = ["OpenCLIPVision"]
