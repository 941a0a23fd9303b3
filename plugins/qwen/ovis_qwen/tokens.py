"""Qwen's special tokens and default system prompts: plain facts, importable without transformers
(the chat formats need them when the plugin is listed; the tokenizer when it is built)."""

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 151643, 151644, 151645
#: Qwen2.5's added tokens from 151646 on, with whether each is "special" (skipped on decode)
QWEN25_EXTRA_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
#: Qwen3's added tokens after Qwen2.5's (151665-151668): tool responses and the thinking markers
QWEN3_EXTRA_TOKENS: tuple[tuple[str, bool], ...] = (
    *QWEN25_EXTRA_TOKENS,
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
#: what an Ovis2.5 / Qwen3 assistant turn without reasoning starts with (not learned)
EMPTY_THINK = "<think>\n\n</think>\n\n"
PAD = ENDOFTEXT
QWEN_SYSTEM = "You are a helpful assistant."
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
