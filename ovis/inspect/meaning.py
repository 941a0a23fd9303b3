"""What the visual words mean, measured: on tokens with known labels (the synthetic scenes know
each object's colour and shape), the mutual information between a token's top word and each label,
and the accuracy of a linear probe (logistic regression) reading the label from the token's
probability vector, beside one reading it from the raw ViT features the head sees.

The plug-in estimate of mutual information is biased upwards when there are many words and few
tokens (a random head still "explains" some of the labels by chance), so each figure comes with the
same estimate over labels shuffled among the tokens: the chance level to compare against.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ovis.inspect.words import InspectError, PatchWords, check_inspectable, patch_words

#: label kinds the synthetic scenes give each token
LABEL_KINDS = ("colour", "shape")
BACKGROUND_LABEL = "background"
#: a token is labelled with an object when that object's colour covers at least this share of its
#: pixels; otherwise it is background
MIN_OBJECT_SHARE = 0.25
#: probability vectors of vocabularies up to this size go to the probe whole; larger ones keep each
#: token's top :data:`PROBE_TOP_K` words (scattered into the columns of the words any token kept)
PROBE_FULL_WORDS = 4096
PROBE_TOP_K = 64


# -- information -------------------------------------------------------------------------------------------
def entropy_bits(labels: Sequence[Any]) -> float:
    counts: dict[Any, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    total = len(labels)
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def mutual_information_bits(words: Sequence[int], labels: Sequence[Any]) -> float:
    """Plug-in ``I(word; label)`` in bits from paired observations."""
    if len(words) != len(labels):
        raise ValueError(f"{len(words)} words but {len(labels)} labels")
    total = len(words)
    if total == 0:
        return 0.0
    joint: dict[tuple[int, Any], int] = {}
    by_word: dict[int, int] = {}
    by_label: dict[Any, int] = {}
    for word, label in zip(words, labels, strict=True):
        joint[(word, label)] = joint.get((word, label), 0) + 1
        by_word[word] = by_word.get(word, 0) + 1
        by_label[label] = by_label.get(label, 0) + 1
    mi = sum(c / total * math.log2(c * total / (by_word[w] * by_label[lab])) for (w, lab), c in joint.items())
    return max(0.0, mi)


def shuffled_mutual_information_bits(
    words: Sequence[int], labels: Sequence[Any], repeats: int = 5, seed: int = 0
) -> float:
    """The mean plug-in MI over ``repeats`` shuffles of the labels: the estimate's chance level."""
    rng = random.Random(seed)
    shuffled = list(labels)
    values = []
    for _ in range(repeats):
        rng.shuffle(shuffled)
        values.append(mutual_information_bits(words, shuffled))
    return sum(values) / len(values) if values else 0.0


# -- the probe --------------------------------------------------------------------------------------------
def probe_accuracy(
    x: torch.Tensor,
    y: torch.Tensor,
    groups: torch.Tensor,
    *,
    test_share: float = 0.3,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a logistic regression from ``x [n, d]`` to class ids ``y [n]``.

    The split is by ``groups`` (the image each token comes from), so no image is in both halves;
    features are standardised on the training half; full-batch Adam for ``steps`` steps.
    """
    generator = torch.Generator().manual_seed(seed)
    unique = groups.unique()
    order = unique[torch.randperm(len(unique), generator=generator)]
    test_groups = order[: max(1, round(len(order) * test_share))]
    test = torch.isin(groups, test_groups)
    train = ~test
    if train.sum() == 0 or test.sum() == 0:
        raise InspectError(f"a probe needs tokens from at least two images; got {len(unique)}")
    x = x.float()
    mean, std = x[train].mean(dim=0), x[train].std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    classes = int(y.max()) + 1
    with torch.enable_grad():
        layer = torch.nn.Linear(x.shape[1], classes)
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        optimiser = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(x[train]), y[train])
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        predicted = layer(x[test]).argmax(dim=-1)
    return float((predicted == y[test]).float().mean())


# -- labelled synthetic scenes ------------------------------------------------------------------------------
def synthetic_scenes(count: int, size: int, seed: int = 0) -> list[tuple[Any, list]]:
    """``count`` scenes of the synthetic task drawn on a ``size`` square: ``[(image, things), ...]``."""
    from ovis.data.synth import draw_scene, random_scene

    rng = random.Random(seed)
    scenes = []
    for _ in range(count):
        things = random_scene(rng)
        scenes.append((draw_scene(things, size, rng), things))
    return scenes


def token_labels(
    image, things: Sequence, boxes: torch.Tensor, kinds: Sequence[str] = LABEL_KINDS
) -> dict[str, list[str | None]]:
    """Each token's labels from the pixels in its box: the object whose colour covers the most of
    it, if at least :data:`MIN_OBJECT_SHARE`, else background; ``None`` for a box with no pixels.

    The synthetic scenes give every object a colour no other object has, so a pixel's colour names
    its object exactly."""
    import numpy as np

    from ovis.data.synth import COLOURS

    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    masks = {thing: np.all(pixels == np.array(COLOURS[thing.colour], dtype=np.int16), axis=-1) for thing in things}
    labels: dict[str, list[str | None]] = {kind: [] for kind in kinds}
    for left, top, right, bottom in boxes.tolist():
        x0, y0, x1, y1 = round(left), round(top), round(right), round(bottom)
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            for kind in kinds:
                labels[kind].append(None)
            continue
        best, share = None, 0.0
        for thing, mask in masks.items():
            covered = float(mask[y0:y1, x0:x1].sum()) / area
            if covered > share:
                best, share = thing, covered
        for kind in kinds:
            labels[kind].append(
                getattr(best, kind) if best is not None and share >= MIN_OBJECT_SHARE else BACKGROUND_LABEL
            )
    return labels


@dataclass
class LabelledTokens:
    """Tokens pooled over many images, with their top word, labels and probe inputs."""

    words: list[int] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in LABEL_KINDS})
    groups: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # per image [t, V'] (or sparse top-k)
    features: list[torch.Tensor] = field(default_factory=list)  # per image [t, s^2 D]

    def add(
        self, index: int, words: PatchWords, labels: dict[str, list[str | None]], probs: torch.Tensor | None
    ) -> torch.Tensor:
        """Pool one image's labelled tokens (drawn in place, seeing some of the image); returns
        their indices."""
        first = labels[next(iter(labels))]
        keep = words.in_place & torch.tensor([label is not None for label in first], dtype=torch.bool)
        where = torch.nonzero(keep).flatten()
        self.words += words.top_word[where].tolist()
        for kind in self.labels:
            self.labels[kind] += [labels[kind][t] for t in where.tolist()]
        self.groups += [index] * len(where)
        if probs is not None:
            self.probs.append(probs[where])
        if words.features is not None:
            self.features.append(words.features[where])
        return where


@dataclass
class MeaningReport:
    images: int
    tokens: int
    vocab_size: int
    by_kind: dict[str, dict[str, Any]]
    probe_inputs: str  # "full" or "top-64"

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "tokens": self.tokens,
            "vocab_size": self.vocab_size,
            "probe_inputs": self.probe_inputs,
            "mi_unit": "bits",
            "by_kind": self.by_kind,
        }


def describe_labels(
    words: Sequence[int],
    labels: Sequence[str],
    groups: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """MI (bits), its shuffled chance level, the label's entropy, and probe accuracies beside the
    majority-class baseline, for one label kind."""
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])
    mi = mutual_information_bits(words, labels)
    h = entropy_bits(labels)
    out: dict[str, Any] = {
        "classes": names,
        "mi_bits": round(mi, 6),
        "mi_shuffled_bits": round(shuffled_mutual_information_bits(words, labels, seed=seed), 6),
        "label_entropy_bits": round(h, 6),
        "mi_share_of_label_entropy": round(mi / h, 6) if h else 0.0,
        "majority_accuracy": round(float(torch.bincount(y).max()) / len(y), 6) if len(y) else 0.0,
    }
    if groups is not None and len(names) > 1:
        if probs is not None:
            out["probe_accuracy_word_probs"] = round(probe_accuracy(probs, y, groups, seed=seed), 6)
        if features is not None:
            out["probe_accuracy_vit_features"] = round(probe_accuracy(features, y, groups, seed=seed), 6)
    return out


def measure_meaning(
    model,
    processor,
    scenes: int | Sequence[tuple[Any, Sequence]] = 200,
    *,
    seed: int = 0,
    probe: bool = True,
    progress: bool = False,
    on_words: Callable[[int, PatchWords], None] | None = None,
) -> MeaningReport:
    """MI between top words and the colour / shape of what each token sees, and linear-probe
    accuracies (word probabilities vs raw ViT features), over synthetic scenes (``scenes``: how many
    to draw at the encoder's image size, or ``[(image, things)]`` already drawn). ``on_words(index,
    words)`` sees each scene's :class:`PatchWords`, so a caller can count usage in the same pass."""
    from tqdm import tqdm

    check_inspectable(model)
    if isinstance(scenes, int):
        if scenes < 2:
            raise InspectError(f"measuring meaning needs 2 or more scenes, got {scenes}")
        scenes = synthetic_scenes(scenes, processor.image_processor.image_size, seed)
    vocab = model.visual_tokenizer.head[0].out_features
    full = vocab <= PROBE_FULL_WORDS
    pooled = LabelledTokens()
    sparse: list[tuple[torch.Tensor, torch.Tensor]] = []
    for index, (image, things) in enumerate(tqdm(scenes, desc="labelled scenes", unit="img", disable=not progress)):
        words = patch_words(
            model, processor, image, top_k=1 if full else PROBE_TOP_K, keep_probs=probe and full, keep_features=probe
        )
        if on_words is not None:
            on_words(index, words)
        labels = token_labels(image, things, words.boxes)
        where = pooled.add(index, words, labels, words.stats.probs)
        if probe and not full:
            sparse.append((words.stats.top_words[where], words.stats.top_probs[where]))
    groups = torch.tensor(pooled.groups)
    probs = features = None
    if probe and pooled.words:
        features = torch.cat(pooled.features)
        probs = torch.cat(pooled.probs) if full else _dense_from_top_k(sparse)
    by_kind = {
        kind: describe_labels(pooled.words, pooled.labels[kind], groups if probe else None, probs, features, seed=seed)
        for kind in LABEL_KINDS
    }
    return MeaningReport(len(scenes), len(pooled.words), vocab, by_kind, "full" if full else f"top-{PROBE_TOP_K}")


def _dense_from_top_k(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Top-k ``(words, probs)`` rows -> dense rows over the words any row kept."""
    words = torch.cat([w for w, _ in parts])
    probs = torch.cat([p for _, p in parts])
    columns, inverse = words.unique(return_inverse=True)
    dense = torch.zeros(words.shape[0], columns.numel())
    dense.scatter_(1, inverse, probs)
    return dense
