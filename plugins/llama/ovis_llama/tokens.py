"""Llama 3's and Llama 3.1+'s special tokens: plain facts, importable without transformers (the
chat formats need them when the plugin is listed; the tokenizer when it is built)."""

BOS, EOS_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
PAD = EOS_TEXT  # Ovis v1 padded Llama 3 with id 128001
#: Llama 3.1 / 3.2 name three of Llama 3's reserved tokens (same ids and vocabulary otherwise; the
#: remaining reserved tokens are numbered on, from <|reserved_special_token_0|> at 128002)
LLAMA31_RENAMED = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}
#: what Meta's Llama 3.1 / 3.2 template puts before every system message (its fixed fallback date;
#: with transformers it writes today's, which would make training prompts change by the day)
LLAMA32_SYSTEM_PREFIX = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
