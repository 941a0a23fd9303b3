"""The headline figures of a model's visual vocabulary in one flat dict, for a report that follows
them across training (the quick-start's stages) or a dashboard: words used, usage perplexity, mean
token entropy, and mutual information of the top word with colour and shape, all over the same
labelled synthetic scenes so that models (or stages) compare."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ovis.inspect.meaning import measure_meaning, synthetic_scenes
from ovis.inspect.vocab import VocabUsage
from ovis.inspect.words import InspectError, PatchWords

#: the figures :func:`vocabulary_figures` returns, in the order a chart draws them
FIGURES = ("words_used", "usage_perplexity", "mean_token_entropy", "mi_colour_bits", "mi_shape_bits")


def vocabulary_figures(
    model, processor, scenes: int | Sequence[tuple[Any, Sequence]] = 200, *, seed: int = 0, probe: bool = False
) -> dict[str, Any]:
    """``{words_used, vocab_size, usage_perplexity, mean_token_entropy, mi_colour_bits,
    mi_colour_shuffled_bits, mi_shape_bits, mi_shape_shuffled_bits[, probe accuracies]}`` over
    ``scenes`` (a count of synthetic scenes drawn with ``seed``, or ``[(image, things)]``).

    One pass over the scenes: the usage is counted from the words the meaning measurement computes
    (the same numbers :func:`ovis.inspect.vocab_usage` gives, at half the cost)."""
    if isinstance(scenes, int):
        scenes = synthetic_scenes(scenes, processor.image_processor.image_size, seed)
    counted: list[VocabUsage] = []

    def count(index: int, words: PatchWords) -> None:
        if not counted:
            counted.append(VocabUsage(torch.zeros(words.vocab_size, dtype=torch.long), 0, per_word=1))
        counted[0].add(index, words)

    meaning = measure_meaning(model, processor, scenes, seed=seed, probe=probe, on_words=count)
    if not counted:
        raise InspectError("no scenes to measure the vocabulary on")
    usage = counted[0].summary()
    out: dict[str, Any] = {
        "images": usage["images"],
        "vocab_size": usage["vocab_size"],
        "words_used": usage["words_used"],
        "usage_perplexity": usage["usage_perplexity"],
        "mean_token_entropy": usage["mean_token_entropy"],
    }
    for kind, figures in meaning.by_kind.items():
        out[f"mi_{kind}_bits"] = figures["mi_bits"]
        out[f"mi_{kind}_shuffled_bits"] = figures["mi_shuffled_bits"]
        for key in ("probe_accuracy_word_probs", "probe_accuracy_vit_features"):
            if key in figures:
                out[f"{kind}_{key}"] = figures[key]
    return out
