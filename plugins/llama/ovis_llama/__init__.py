"""ovis-plugin-llama: Meta Llama 3 and 3.2 language models, tokenizers and chat formats for ovis.

Presets with ``builder: llama3`` in the ovis registry are registered by :mod:`ovis_llama.plugin`;
``offline:llama3`` and ``offline:llama3.2`` build the real Llama 3 tokenizer (with 3.1+ token names)
without network access.
"""

__version__ = "0.1.0"
