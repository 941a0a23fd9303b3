"""ovis-plugin-gemma: Google Gemma 2 language models, tokenizer and chat format for ovis.

Presets with ``builder: gemma`` in the ovis registry are registered by :mod:`ovis_gemma.plugin`;
``offline:gemma-toy`` builds a small tokenizer in Gemma's layout without network access (Gemma's
own 256k vocabulary is not available offline).
"""

__version__ = "0.1.0"
