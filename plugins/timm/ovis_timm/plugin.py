"""Entry point of the timm plugin: registers one backbone per matching preset file."""

from ovis.interfaces import hookimpl, iter_presets

#: builder -> the class that builds it, imported when a model is built, not when the plugin is
#: listed (torch stays out of `ovis list`)
BUILDERS = {"timm-vit": "ovis_timm.vit:TimmViT"}


@hookimpl
def register_vision_backbones(register):
    for spec in iter_presets("vision", builders=set(BUILDERS)):
        register(spec, BUILDERS[spec.builder])
