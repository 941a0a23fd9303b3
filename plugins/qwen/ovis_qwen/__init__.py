"""ovis-plugin-qwen: Qwen1.5 / Qwen2.5 language models, tokenizer and ChatML formats for ovis.

Presets with ``builder: qwen`` in the ovis registry are registered by :mod:`ovis_qwen.plugin`;
``offline:qwen`` and ``offline:qwen2.5`` build the real Qwen tokenizer without network access.
"""

__version__ = "0.1.0"
