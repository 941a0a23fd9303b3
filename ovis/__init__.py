"""ovis: build, train and serve Ovis-style multimodal LLMs.

    import ovis
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out="tiny-ovis")
    model, processor = ovis.load("tiny-ovis")

Importing ovis registers ``OvisConfig`` / ``OvisForCausalLM`` with transformers' Auto classes.
"""

from ovis.compose import compose, load, save
from ovis.model import OvisConfig, OvisForCausalLM
from ovis.plugin_host import PluginHost, UnknownNameError, get_host
from ovis.processing import OvisProcessor

__version__ = "0.1.0"

__all__ = [
    "OvisConfig",
    "OvisForCausalLM",
    "OvisProcessor",
    "PluginHost",
    "UnknownNameError",
    "__version__",
    "compose",
    "get_host",
    "load",
    "save",
]
