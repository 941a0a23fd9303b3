"""Llama 3's special tokens: plain facts, importable without transformers (the chat format needs
them when the plugin is listed; the tokenizer when it is built)."""

BOS, EOS_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
PAD = EOS_TEXT  # Ovis v1 padded Llama 3 with id 128001
