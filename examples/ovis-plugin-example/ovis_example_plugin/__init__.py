"""An example third-party ovis plugin, kept small enough to read in one sitting.

- :mod:`.plugin`: the entry point's module: the specs and the three hooks;
- :mod:`.vit`: a pure-PyTorch ViT (``example-vit``);
- :mod:`.llm`: a Llama-architecture LM with a byte-level tokenizer built offline (``example-llm``);
- :mod:`.chat`: its chat format (``example-chat``) and a plain-text one (``example-plain``).
"""
