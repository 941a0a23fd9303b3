"""Pictures of the visual words (matplotlib, Agg: no display needed; exemplar sheets with PIL).

``image_words``: the image, its entropy heat map and a colour-coded map of each token's top word,
side by side (tiles drawn in place; the tiled layout's global view in a second row). The top-word
map gives the image's 20 most frequent top words a colour each (tab20), the rest grey, and writes
each token's word in its box when there are at most 64 tokens.
``usage_histogram``: how often each word is a top word, most used first. ``exemplar_sheet``: for
the most used words, the image regions that fire each most strongly, one row per word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ovis.inspect.vocab import VocabUsage
from ovis.inspect.words import PatchWords
from ovis.interfaces.image import ImageInput, load_image

#: the longest side a map is rasterised at (boxes are scaled down to it)
MAP_SIDE = 512
#: distinct colours for the most frequent top words of an image; the rest share grey
WORD_COLOURS = 20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def raster(words: PatchWords, values: torch.Tensor, mask: torch.Tensor, side: int = MAP_SIDE) -> torch.Tensor:
    """``values`` of the tokens in ``mask`` painted into their boxes on an image-shaped grid (NaN
    where no token is), at most ``side`` pixels on the long side."""
    width, height = words.image_size
    scale = min(1.0, side / max(width, height))
    out = torch.full((max(1, round(height * scale)), max(1, round(width * scale))), float("nan"))
    for t in torch.nonzero(mask).flatten().tolist():
        left, top, right, bottom = (v * scale for v in words.boxes[t].tolist())
        out[round(top) : max(round(top) + 1, round(bottom)), round(left) : max(round(left) + 1, round(right))] = float(
            values[t]
        )
    return out


def word_palette(words: PatchWords, mask: torch.Tensor) -> dict[int, int]:
    """The image's most frequent top words (among ``mask``) -> colour index 0..19 (ties: lower word)."""
    top = words.top_word[mask]
    counts = torch.bincount(top, minlength=words.vocab_size) if top.numel() else torch.zeros(1, dtype=torch.long)
    order = sorted(torch.nonzero(counts).flatten().tolist(), key=lambda w: (-int(counts[w]), w))
    return {w: i for i, w in enumerate(order[:WORD_COLOURS])}


def image_words(image: ImageInput, words: PatchWords, path: str | Path, *, title: str | None = None) -> Path:
    """Write the side-by-side picture of one image (see the module) to ``path`` (PNG)."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    image = load_image(image)
    rows = [("tiles in place" if words.grid is not None else None, words.in_place)]
    if words.has_global_view:
        area = (words.boxes[:, 2] - words.boxes[:, 0]) * (words.boxes[:, 3] - words.boxes[:, 1])
        rows.append(("global view", (words.views == 0) & (area > 0)))
    figure, axes = plt.subplots(len(rows), 3, figsize=(13, 4.3 * len(rows)), squeeze=False)
    max_entropy = math.log(words.vocab_size)
    cmap = ListedColormap([*plt.get_cmap("tab20").colors[:WORD_COLOURS], (0.6, 0.6, 0.6)])
    extent = (0, words.image_size[0], words.image_size[1], 0)
    for row, (label, mask) in enumerate(rows):
        left, middle, right = axes[row]
        left.imshow(image, extent=extent)
        left.set_title("image" + (f" ({label})" if label else ""))
        entropy = raster(words, words.stats.entropy, mask)
        middle.imshow(image, extent=extent, alpha=0.35)
        shown = middle.imshow(entropy.numpy(), extent=extent, cmap="magma", vmin=0.0, vmax=max_entropy, alpha=0.85)
        middle.set_title(f"entropy (nats; max ln {words.vocab_size} = {max_entropy:.2f})")
        figure.colorbar(shown, ax=middle, fraction=0.046, pad=0.04)
        palette = word_palette(words, mask)
        codes = torch.tensor([palette.get(int(w), WORD_COLOURS) for w in words.top_word], dtype=torch.float32)
        right.imshow(image, extent=extent, alpha=0.35)
        right.imshow(
            raster(words, codes, mask).numpy(),
            extent=extent,
            cmap=cmap,
            vmin=-0.5,
            vmax=WORD_COLOURS + 0.5,
            interpolation="nearest",
            alpha=0.85,
        )
        distinct = int(words.top_word[mask].unique().numel())
        right.set_title(f"top word ({distinct} distinct)")
        if int(mask.sum()) <= 64:  # few tokens: write each one's word in its box
            for t in torch.nonzero(mask).flatten().tolist():
                x0, y0, x1, y1 = words.boxes[t].tolist()
                right.text(
                    (x0 + x1) / 2,
                    (y0 + y1) / 2,
                    str(int(words.top_word[t])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black",
                )
        for axis in (left, middle, right):
            axis.set_xlim(0, words.image_size[0])
            axis.set_ylim(words.image_size[1], 0)
            axis.set_xticks([])
            axis.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 1, 0.95) if title else None)
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def usage_histogram(usage: VocabUsage, path: str | Path, *, title: str | None = None) -> Path:
    """Top-word counts, most used word first (log scale), with the headline numbers."""
    plt = _pyplot()
    counts = usage.counts.sort(descending=True).values
    used = counts[counts > 0]
    figure, axis = plt.subplots(figsize=(9, 4))
    if used.numel():
        axis.bar(range(1, used.numel() + 1), used.numpy(), width=1.0, color="#1f77b4")
        axis.set_yscale("log")
    axis.set_xlabel("word rank (most used first)")
    axis.set_ylabel("tokens whose top word it is")
    axis.set_title(
        title
        or (
            f"{usage.words_used} of {usage.vocab_size} words used over {usage.images} images "
            f"({usage.tokens} tokens); usage perplexity {usage.usage_perplexity:.1f}"
        )
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def figures_by_stage(figures: dict[str, dict], path: str | Path, *, title: str | None = None) -> Path:
    """Words used, mean token entropy and MI with colour / shape against the stages (or any ordered
    labels) of ``{label: ovis.inspect.figures.vocabulary_figures(...)}``: the vocabulary organising
    itself over training."""
    plt = _pyplot()
    labels = list(figures)
    x = list(range(len(labels)))
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    left.plot(x, [figures[k]["words_used"] for k in labels], marker="o")
    left.set_yscale("log")
    left.set_title("words used as top words")
    middle.plot(x, [figures[k]["mean_token_entropy"] for k in labels], marker="o", color="#9467bd")
    middle.set_title("mean token entropy (nats)")
    for kind, colour in (("colour", "#d62728"), ("shape", "#1f77b4")):
        right.plot(x, [figures[k][f"mi_{kind}_bits"] for k in labels], marker="o", color=colour, label=kind)
        right.plot(
            x,
            [figures[k][f"mi_{kind}_shuffled_bits"] for k in labels],
            linestyle=":",
            color=colour,
            label=f"{kind}, shuffled labels",
        )
    right.set_title("MI of the top word with the label (bits)")
    right.legend(fontsize=8)
    for axis in (left, middle, right):
        axis.set_xticks(x)
        axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def exemplar_sheet(
    usage: VocabUsage,
    images: Sequence[ImageInput],
    path: str | Path,
    *,
    words: int = 16,
    cell: int = 48,
    context: float = 0.0,
) -> Path:
    """One row per most used word: its label, then its exemplar regions (cropped from the images,
    each grown by ``context`` of its size on every side, scaled to ``cell`` pixels)."""
    chosen = usage.most_used(words)
    exemplars = usage.exemplars
    per_row = max((len(exemplars.get(w, [])) for w, _ in chosen), default=0)
    label_width = 110
    sheet = Image.new("RGB", (label_width + max(1, per_row) * (cell + 4), max(1, len(chosen)) * (cell + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    opened: dict[int, Image.Image] = {}
    for row, (word, count) in enumerate(chosen):
        y = row * (cell + 4) + 2
        draw.text((4, y + cell // 2 - 12), f"word {word}", fill="black")
        draw.text((4, y + cell // 2 + 2), f"{count} tokens", fill="dimgray")
        for column, item in enumerate(exemplars.get(word, [])):
            if item.image not in opened:
                opened[item.image] = load_image(images[item.image])
            left, top, right, bottom = item.box
            grow_x, grow_y = (right - left) * context, (bottom - top) * context
            crop = opened[item.image].crop(
                (
                    max(0, round(left - grow_x)),
                    max(0, round(top - grow_y)),
                    round(right + grow_x),
                    round(bottom + grow_y),
                )
            )
            crop = crop.resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(crop, (label_width + column * (cell + 4), y))
    path = Path(path)
    sheet.save(path)
    return path
