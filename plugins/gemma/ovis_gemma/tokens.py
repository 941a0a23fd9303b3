"""Gemma's special tokens and their ids: plain facts, importable without transformers (the chat
format needs them when the plugin is listed; the tokenizer when it is built).

Ids 0-4 are Gemma's control tokens (``GemmaTokenizer``'s defaults), 106 and 107 the turn markers
of Gemma's chat template; the ids between are reserved control tokens of the real vocabulary.
"""

PAD, EOS, BOS, UNK, MASK = "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
SPECIAL_IDS = {PAD: 0, EOS: 1, BOS: 2, UNK: 3, MASK: 4, START_OF_TURN: 106, END_OF_TURN: 107}
#: Gemma's roles in the prompt: the assistant is "model"; there is no system role
ROLES = {"user": "user", "assistant": "model"}
