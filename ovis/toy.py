"""The embedded default: the toy pair the quick-start composes, and how.

One home for these facts: the quick-start composes them, and the told toy LLM
(:mod:`ovis.told_pretrain`) is pre-trained inside the same composition, from the random
:data:`LLM`.
"""

VIT, LLM, VISUAL_VOCAB = "clip-toy", "qwen-toy", 1024
#: The LLM the quick-start composes: :data:`LLM` pre-trained on the scenes told in words
#: (:mod:`ovis.told_pretrain`), shipped as a preset with its build report beside it.
TOLD_LLM = "qwen-toy-told"
#: Ovis2's merge of each 2 x 2 block of patches into one visual token: clip-toy's 4 x 4 patches give
#: one token per cell of the scenes' 2 x 2 grid, and the look-ups by position are learned far sooner.
HIDDEN_STRIDE = 2
