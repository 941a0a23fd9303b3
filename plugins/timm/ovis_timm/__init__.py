"""Ovis plugin: timm Vision Transformers as Ovis vision backbones."""

from ovis_timm.vit import TimmViT

__all__ = ["TimmViT"]
