"""ovis-plugin-llama: Meta Llama 3 language models, tokenizer and chat format for ovis.

Presets with ``builder: llama3`` in the ovis registry are registered by :mod:`ovis_llama.plugin`;
``offline:llama3`` builds the real Llama 3 tokenizer without network access.
"""

__version__ = "0.1.0"
