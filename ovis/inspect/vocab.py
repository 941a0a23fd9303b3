"""A model's vocabulary in use: over N images, how often each visual word is a token's top word,
how many of the ``V'`` words are ever used, the perplexity of that usage, and for each word the
image regions that fire it most strongly (its exemplars)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ovis.inspect.words import PatchWords, patch_words
from ovis.interfaces.image import ImageInput


@dataclass(frozen=True, order=True)
class Exemplar:
    """A token that fired a word as its top word: ``prob`` its probability, ``image`` the image's
    index among those inspected, ``box`` its region there (pixels)."""

    prob: float
    image: int
    box: tuple[float, float, float, float]
    view: int = 0


@dataclass
class VocabUsage:
    """Top-word counts over every token of ``images`` images (all views), and per word its
    strongest exemplars (tokens that see some of the image; most probable first)."""

    counts: torch.Tensor  # [V'] long
    images: int
    entropy_sum: float = 0.0  # of every token's distribution (nats), for the mean
    per_word: int = 8
    _heaps: dict[int, list] = field(default_factory=dict, repr=False)

    @property
    def exemplars(self) -> dict[int, list[Exemplar]]:
        """Per word, its strongest tokens (most probable first; ties: the earliest)."""
        return {w: [k[3] for k in sorted(h, key=lambda k: k[:3], reverse=True)] for w, h in self._heaps.items()}

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    @property
    def vocab_size(self) -> int:
        return int(self.counts.numel())

    @property
    def words_used(self) -> int:
        return int((self.counts > 0).sum())

    @property
    def usage_entropy(self) -> float:
        """Entropy (nats) of the top-word usage distribution."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        share = self.counts[self.counts > 0].double() / total
        return float(-(share * share.log()).sum())

    @property
    def usage_perplexity(self) -> float:
        """``exp(usage entropy)``: how many equally used words would give the same spread."""
        return math.exp(self.usage_entropy)

    @property
    def mean_entropy(self) -> float:
        return self.entropy_sum / self.tokens if self.tokens else 0.0

    def most_used(self, n: int) -> list[tuple[int, int]]:
        """``[(word, count), ...]`` of the ``n`` most used words (ties: the lower word first)."""
        order = sorted(range(self.vocab_size), key=lambda w: (-int(self.counts[w]), w))
        return [(w, int(self.counts[w])) for w in order[:n] if self.counts[w] > 0]

    def add(self, index: int, words: PatchWords) -> None:
        """Count one image's tokens (``index``: its position among the images inspected)."""
        top = words.top_word
        self.counts += torch.bincount(top, minlength=self.vocab_size)
        self.entropy_sum += float(words.stats.entropy.double().sum())
        self.images += 1
        area = (words.boxes[:, 2] - words.boxes[:, 0]) * (words.boxes[:, 3] - words.boxes[:, 1])
        probs = words.stats.top_probs[:, 0]
        for t in torch.nonzero(area > 0).flatten().tolist():
            item = Exemplar(float(probs[t]), index, tuple(float(v) for v in words.boxes[t]), int(words.views[t]))
            heap = self._heaps.setdefault(int(top[t]), [])
            # (prob, -image, -token): among equal probabilities the earliest token wins.
            key = (item.prob, -index, -t, item)
            if len(heap) < self.per_word:
                heapq.heappush(heap, key)
            elif key[:3] > heap[0][:3]:
                heapq.heapreplace(heap, key)

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what a per-stage record or a dashboard shows)."""
        return {
            "images": self.images,
            "tokens": self.tokens,
            "vocab_size": self.vocab_size,
            "words_used": self.words_used,
            "words_used_share": round(self.words_used / self.vocab_size, 6) if self.vocab_size else 0.0,
            "usage_perplexity": round(self.usage_perplexity, 4),
            "mean_token_entropy": round(self.mean_entropy, 6),
            "mean_effective_words": round(math.exp(self.mean_entropy), 4),
        }

    def to_dict(self, top: int = 50) -> dict[str, Any]:
        tokens = max(1, self.tokens)
        exemplars = self.exemplars
        return {
            **self.summary(),
            "entropy_unit": "nats",
            "most_used": [
                {
                    "word": w,
                    "count": c,
                    "share": round(c / tokens, 6),
                    "exemplars": [
                        {"image": e.image, "box": [round(v, 2) for v in e.box], "prob": round(e.prob, 6)}
                        for e in exemplars.get(w, [])
                    ],
                }
                for w, c in self.most_used(top)
            ],
            "counts": {str(w): int(c) for w, c in enumerate(self.counts.tolist()) if c},
        }


def vocab_usage(
    model,
    processor,
    images: Sequence[ImageInput],
    *,
    per_word: int = 8,
    progress: bool = False,
    description: str = "inspecting images",
) -> VocabUsage:
    """Inspect every image (:func:`ovis.inspect.patch_words`, top word only) and count the words."""
    from tqdm import tqdm

    usage: VocabUsage | None = None
    for index, image in enumerate(tqdm(images, desc=description, unit="img", disable=not progress)):
        words = patch_words(model, processor, image, top_k=1)
        if usage is None:
            usage = VocabUsage(torch.zeros(words.vocab_size, dtype=torch.long), 0, per_word=per_word)
        usage.add(index, words)
    if usage is None:
        from ovis.inspect.words import InspectError, check_inspectable

        check_inspectable(model)
        raise InspectError("no images to inspect")
    return usage
