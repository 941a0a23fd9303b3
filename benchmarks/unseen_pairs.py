"""Where a quick-start run loses the held-out colour-shape pairs: the ViT or the visual words.

For a finished ``ovis quickstart`` directory, on its compositional split's images (each cell's pair
read back from the pixels, as ``ovis.told_pretrain`` tells a scene):

- a linear probe on the frozen ViT's merged cell features (the visual head's input), trained on
  the seen pairs' cells of the held-out split and tested on the unseen pairs' cells: is the shape
  of a red triangle in the ViT's features in a form shared with the other colours?
- for each stage's export, the told pair (the sum of the LLM's embeddings of the two words) whose
  embedding is nearest (cosine) to the cell's visual embedding: its own pair, a seen pair of the
  same colour, or another.

    python benchmarks/unseen_pairs.py runs/quickstart [--stages stage2 stage3] [--images 250]

Figures in benchmarks/README.md ("Shapes in any colour").
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

import ovis
from ovis.data.synth import COLOURS, HELD_OUT_PAIRS, SHAPES
from ovis.told_pretrain import cell_word_ids, decode_scenes, told_embeddings

PAIRS = [(c, s) for c in COLOURS for s in SHAPES]


def cells(model, processor, images: list[Path]):
    """Per occupied cell: (merged ViT feature, visual embedding, pair)."""
    pixels = torch.stack([processor.image_processor.preprocess_one(Image.open(f).convert("RGB")) for f in images])
    with torch.no_grad():
        features = model.visual_tokenizer.features(pixels)
        embeds = model.encode_images(pixels)
    if embeds.shape[1] == features.shape[1] + 2:  # the indicators around the cell tokens
        embeds = embeds[:, 1:-1]
    scenes = decode_scenes(pixels, processor.image_processor)
    return [(features[i, j], embeds[i, j], pair) for i, row in enumerate(scenes) for j, pair in enumerate(row) if pair]


def probe_shape(train: list, test: list, steps: int = 500) -> float:
    """Accuracy on ``test`` of a softmax regression on standardised features, fitted on ``train``."""
    x = torch.stack([f for f, _, _ in train])
    y = torch.tensor([SHAPES.index(p[1]) for _, _, p in train])
    mean, std = x.mean(0), x.std(0) + 1e-5
    weight = torch.zeros(x.shape[1], len(SHAPES), requires_grad=True)
    bias = torch.zeros(len(SHAPES), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy((x - mean) / std @ weight + bias, y) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    xt = torch.stack([f for f, _, _ in test])
    yt = torch.tensor([SHAPES.index(p[1]) for _, _, p in test])
    with torch.no_grad():
        return float((((xt - mean) / std @ weight + bias).argmax(1) == yt).float().mean())


def nearest_told(model, processor, found: list) -> dict[str, dict[str, float]]:
    """Share of seen and unseen cells whose visual embedding is nearest their own told pair, a seen
    pair of their colour, one of their shape, or another."""
    with torch.no_grad():
        ids = cell_word_ids([[p, None, None, None] for p in PAIRS], processor.tokenizer)
        told = told_embeddings(model.llm.get_input_embeddings(), ids)[:, 0]
    counts: dict[str, Counter] = {"seen": Counter(), "unseen": Counter()}
    for _, embed, pair in found:
        best = PAIRS[int(torch.nn.functional.cosine_similarity(embed[None], told).argmax())]
        tag = "own pair" if best == pair else "same colour" if best[0] == pair[0] else (
            "same shape" if best[1] == pair[1] else "other")
        counts["unseen" if pair in HELD_OUT_PAIRS else "seen"][tag] += 1
    return {k: {tag: round(n / sum(c.values()), 3) for tag, n in c.items()} for k, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished ovis quickstart directory")
    parser.add_argument("--stages", nargs="+", default=["stage2", "stage3"])
    parser.add_argument("--images", type=int, default=250, help="compositional-split images to read")
    args = parser.parse_args()
    data = args.run / "data"
    items = json.loads((data / "eval-compositional.json").read_text())
    images = [data / "images" / name for name in sorted({item["image"] for item in items})[: args.images]]
    result = {}
    vision, processor = ovis.load(args.run / "vision", dtype="float32")
    found = cells(vision.eval(), processor, images)
    seen = [c for c in found if c[2] not in HELD_OUT_PAIRS]
    unseen = [c for c in found if c[2] in HELD_OUT_PAIRS]
    half = len(seen) // 2
    result["vit_probe_shape"] = {"seen (other half)": probe_shape(seen[:half], seen[half:]),
                                 "unseen": probe_shape(seen, unseen), "cells": [len(seen), len(unseen)]}
    for stage in args.stages:
        model, processor = ovis.load(args.run / stage / "final", dtype="float32")
        result[f"{stage}_nearest_told_pair"] = nearest_told(model.eval(), processor, cells(model, processor, images))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
