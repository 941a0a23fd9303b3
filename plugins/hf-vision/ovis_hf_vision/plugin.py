"""Entry point of the hf-vision plugin: registers one backbone per matching preset file."""

from ovis.interfaces import hookimpl, iter_presets
from ovis_hf_vision.clip import HFCLIPVision
from ovis_hf_vision.siglip import HFSiglipVision

BUILDERS = {"hf-clip-vision": HFCLIPVision, "hf-siglip-vision": HFSiglipVision}


@hookimpl
def register_vision_backbones(register):
    for spec in iter_presets("vision", builders=set(BUILDERS)):
        register(spec, BUILDERS[spec.builder])
