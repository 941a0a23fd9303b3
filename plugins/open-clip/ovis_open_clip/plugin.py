"""Entry point of the open-clip plugin: registers one backbone per matching preset file."""

from ovis.interfaces import hookimpl, iter_presets
from ovis_open_clip.vit import OpenCLIPVision

BUILDERS = {"open_clip": OpenCLIPVision}


@hookimpl
def register_vision_backbones(register):
    for spec in iter_presets("vision", builders=set(BUILDERS)):
        register(spec, BUILDERS[spec.builder])
