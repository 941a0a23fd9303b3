"""Entry point of the timm plugin: registers one backbone per matching preset file."""

from ovis.interfaces import hookimpl, iter_presets
from ovis_timm.vit import TimmViT

BUILDERS = {"timm-vit": TimmViT}


@hookimpl
def register_vision_backbones(register):
    for spec in iter_presets("vision", builders=set(BUILDERS)):
        register(spec, BUILDERS[spec.builder])
