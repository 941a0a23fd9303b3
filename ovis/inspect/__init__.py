"""Seeing the visual words: what each patch of an image says in a model's visual vocabulary.

``patch_words`` (one image: per token its top-k words, probabilities, entropy and box in the
image), ``vocab_usage`` (N images: how the vocabulary is used, and each word's exemplar patches),
``measure_meaning`` (labelled synthetic scenes: mutual information between words and colour /
shape, and linear probes), ``vocabulary_figures`` (the headline numbers in one dict, for a report
across training), and the pictures in :mod:`ovis.inspect.draw`. ``ovis inspect`` on the
command line only draws what these return.
"""

from __future__ import annotations

from ovis.inspect.figures import FIGURES, vocabulary_figures
from ovis.inspect.meaning import MeaningReport, measure_meaning, mutual_information_bits, probe_accuracy
from ovis.inspect.vocab import Exemplar, VocabUsage, vocab_usage
from ovis.inspect.words import TOP_WORD_MEANS, InspectError, PatchWords, TokenStats, patch_words, word_stats

__all__ = [
    "FIGURES",
    "TOP_WORD_MEANS",
    "Exemplar",
    "InspectError",
    "MeaningReport",
    "PatchWords",
    "TokenStats",
    "VocabUsage",
    "measure_meaning",
    "mutual_information_bits",
    "patch_words",
    "probe_accuracy",
    "vocab_usage",
    "vocabulary_figures",
    "word_stats",
]
