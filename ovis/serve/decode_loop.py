"""ovis's own decoding loop: prefill from ``inputs_embeds``, then one LLM step per token over a KV cache.

Hugging Face ``generate`` spends a good part of each step, on a small model, in Python around the
forward call (config attribute look-ups, mask bookkeeping, the logits-processor and
stopping-criteria lists). :func:`decode` does only what ovis asks of it: greedy decoding, or
sampling with temperature, top-k, top-p and a repetition penalty, rows that stop on their own, and a
callback per step for streaming. It calls the LLM as ``generate`` does (the same position ids, 2-D
attention mask, cache class and ``logits_to_keep``), and picks tokens with the same tensor operations
in the same order, so greedy ids equal ``generate``'s and sampling from a seed draws the same tokens.

One deliberate difference: the repetition penalty counts every token a row has generated. Given
left-padded ``inputs_embeds``, ``generate`` (transformers 5) skips as many of a row's first new
tokens as the row has pad tokens, so a padded row was penalised differently in a batch than alone.

What the loop does not cover is left to ``generate``; :func:`needs_hf_generate` says when and why.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

#: generation-config fields the loop reproduces, or that ovis sets on every call; a checkpoint's
#: ``generation_config`` that sets any other field (``no_repeat_ngram_size``, ``suppress_tokens``,
#: ``min_p``...) sends its requests to ``generate``, which knows them all.
HANDLED_CONFIG_FIELDS = frozenset(
    {
        "_from_model_config",
        "transformers_version",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict_in_generate",
        "output_scores",
        "output_logits",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "decoder_start_token_id",
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "max_length",
        "max_new_tokens",
        "num_beams",
    }
)


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token. ``do_sample=False`` is greedy (the other knobs but
    ``repetition_penalty`` are then unused, as in ``generate``)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None


def needs_hf_generate(llm, num_beams: int = 1) -> str | None:
    """Why a request on ``llm`` must go through Hugging Face ``generate``, or None when :func:`decode`
    gives the same result."""
    if num_beams > 1:
        return "beam search"
    config = getattr(llm, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only Hugging Face model"
    params = _forward_parameters(llm)
    if _cache_argument(params) is None or not {"inputs_embeds", "position_ids", "attention_mask"} <= params:
        return "its forward takes no KV cache, inputs_embeds, position_ids or attention_mask"
    if not getattr(llm, "_supports_default_dynamic_cache", lambda: True)():
        return "it keeps a cache of its own kind"
    generation_config = getattr(llm, "generation_config", None)
    if generation_config is not None:
        defaults = _default_generation_config()
        extra = sorted(
            name
            for name, value in vars(generation_config).items()
            if not name.startswith("_") and name not in HANDLED_CONFIG_FIELDS and defaults.get(name, value) != value
        )
        if extra:
            return f"its generation config sets {', '.join(extra)}"
        if generation_config.use_cache is False or getattr(generation_config, "cache_implementation", None):
            return "its generation config asks for another cache"
    return None


def decode(
    llm,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_ids: Collection[int] = (),
    pad_token_id: int | None = None,
    on_step: Callable[[list[int]], Sequence[bool]] | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after left-padded prompt embeddings.

    ``on_step`` gets each step's new token per row (a finished row gets ``pad_token_id``) and returns
    which rows are done (their own limits, stop strings, cancellation); a row is also done at one of
    ``eos_ids``. Generation ends when every row is done. Returns the new tokens ``[batch, steps]``,
    ``pad_token_id`` after a row's end, as ``generate`` returns them. Call under ``torch.inference_mode``
    and seed the global generator first for reproducible sampling.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    batch, length = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    mask = attention_mask.to(device)
    # The prompt's positions count its real tokens only; pads sit at 0 (as generate puts them).
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    # Without padding, generate drops the mask (faster attention); with it, the 2-D mask grows by
    # one column a step: one preallocated tensor, sliced.
    full_mask = torch.cat([mask, mask.new_ones(batch, max_new_tokens)], dim=1) if not bool(mask.all()) else None
    steps_ahead = positions[:, -1:] + torch.arange(1, max_new_tokens + 1, device=device)
    fixed = _call_arguments(llm)
    picker = _Picker(sampling, batch, device)
    eos = frozenset(int(i) for i in eos_ids)
    finished = [False] * batch
    chosen: list[torch.Tensor] = []
    output = llm(
        inputs_embeds=inputs_embeds,
        attention_mask=None if full_mask is None else full_mask[:, :length],
        position_ids=positions,
        **fixed,
    )
    for step in range(max_new_tokens):
        tokens = picker(output.logits[:, -1])
        if pad_token_id is not None and any(finished):
            tokens = tokens.masked_fill(torch.tensor(finished, device=device), pad_token_id)
        chosen.append(tokens)
        ids = tokens.tolist()
        done = on_step(ids) if on_step is not None else finished
        finished = [f or d or t in eos for f, d, t in zip(finished, done, ids, strict=True)]
        if all(finished) or step + 1 == max_new_tokens:
            break
        picker.saw(tokens)
        output = llm(
            input_ids=tokens[:, None],
            attention_mask=None if full_mask is None else full_mask[:, : length + step + 1],
            position_ids=steps_ahead[:, step : step + 1],
            **fixed,
        )
    return torch.stack(chosen, dim=1)


class _Picker:
    """Scores -> next tokens: the repetition penalty, then temperature, top-k and top-p (the order
    ``generate`` applies them in), then argmax or a draw from the softmax."""

    def __init__(self, sampling: Sampling, batch: int, device: torch.device) -> None:
        self.sampling = sampling
        penalty = sampling.repetition_penalty
        self.penalty = penalty if penalty is not None and penalty != 1.0 else None
        self.batch, self.device = batch, device
        self.seen: torch.Tensor | None = None  # [batch, vocab] bool: tokens each row has generated

    def saw(self, tokens: torch.Tensor) -> None:
        if self.penalty is None:
            return
        if self.seen is None:
            self.seen = torch.zeros(self.batch, self._vocab, dtype=torch.bool, device=self.device)
        self.seen.scatter_(1, tokens[:, None], True)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        if not s.do_sample and self.penalty is None:
            return logits.argmax(dim=-1)  # float32 or not, the same index
        scores = logits.float()
        self._vocab = scores.shape[-1]
        if self.penalty is not None and self.seen is not None:
            penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            scores = torch.where(self.seen, penalised, scores)
        if not s.do_sample:
            return scores.argmax(dim=-1)
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k:
            kth = torch.topk(scores, min(s.top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if s.top_p is not None and s.top_p < 1.0:
            scores = _top_p(scores, s.top_p)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose probabilities add up to ``top_p`` (always at least one)."""
    ascending, order = torch.sort(scores, descending=False)
    mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = mass_below <= 1 - top_p
    drop[..., -1] = False
    return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))


@functools.cache
def _default_generation_config() -> dict:
    from transformers import GenerationConfig

    return dict(vars(GenerationConfig()))


def _forward_parameters(llm) -> frozenset[str]:
    return _class_forward_parameters(type(llm))


@functools.cache
def _class_forward_parameters(cls) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _cache_argument(params: frozenset[str]) -> str | None:
    # transformers renamed past_key_values to cache during 5.x; take whichever this forward has.
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _new_cache(llm):
    from transformers import DynamicCache

    config = llm.config.get_text_config(decoder=True)
    try:
        return DynamicCache(config=config)  # sliding-window layers where the model has them
    except TypeError:
        return DynamicCache()


def _call_arguments(llm) -> dict:
    """The keyword arguments every forward call of one generation shares (a fresh cache among them)."""
    params = _forward_parameters(llm)
    fixed = {_cache_argument(params): _new_cache(llm), "use_cache": True, "return_dict": True}
    if "logits_to_keep" in params:
        fixed["logits_to_keep"] = 1  # the prefill's logits for the last position only
    return fixed
