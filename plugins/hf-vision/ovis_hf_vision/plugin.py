"""Entry point of the hf-vision plugin: registers one backbone per matching preset file."""

from ovis.interfaces import hookimpl, iter_presets

#: builder -> the class that builds it, imported when a model is built, not when the plugin is
#: listed (torch stays out of `ovis list`)
BUILDERS = {
    "hf-clip-vision": "ovis_hf_vision.clip:HFCLIPVision",
    "hf-siglip-vision": "ovis_hf_vision.siglip:HFSiglipVision",
    "hf-siglip2-vision": "ovis_hf_vision.siglip2:HFSiglip2Vision",
    "hf-aimv2-vision": "ovis_hf_vision.aimv2:HFAimv2Vision",
}


@hookimpl
def register_vision_backbones(register):
    for spec in iter_presets("vision", builders=set(BUILDERS)):
        register(spec, BUILDERS[spec.builder])
