"""Per-token visual words: which words each patch (or merged block of patches) of an image fires.

For each visual token the head's logits (``Linear -> LayerNorm``) are turned into a distribution
over the ``V'`` visual words (the table's rows less its indicator rows), and this module reports the
``k`` most probable words with their probabilities, the entropy of the distribution and its
effective number of words ``exp(entropy)``.

What "top word" means for each tokenize function:

- ``softmax`` (the paper's default): the distribution *is* what the model embeds, a weighted sum
  of VTE rows; the top word is its most probable word.
- ``gumbel_argmax``: the model embeds one word drawn by the Gumbel-max trick, ``argmax(logits +
  noise)``, which is a draw from ``softmax(logits)`` whatever ``tau`` (``tau`` only shapes the
  relaxed sample the gradient flows through). The probabilities reported are those of being drawn;
  the top word is the argmax of the logits, the most likely draw.
- ``st_argmax``: the model embeds the argmax of the logits, always; the softmax reported (the
  distribution its straight-through gradient uses) says how close that choice was, and its
  entropy how undecided the head is, although what is sent is one word.

Nothing larger than one chunk of ``[rows, V']`` logits is held at a time: the chunks are those of
the lean visual path (:func:`ovis.model.visual_path.chunk_rows_for`, 1024 rows at V = 131072), and
each chunk keeps only its top-k, entropy and log-normaliser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ovis.errors import OvisError
from ovis.inspect.layout import token_boxes, token_square_boxes, view_maps
from ovis.interfaces.image import ImageInput, load_image
from ovis.model.visual_path import chunk_rows_for


class InspectError(OvisError, ValueError):
    """A model or an input that cannot be inspected (the MLP adapter, a bad image...)."""


@dataclass
class TokenStats:
    """Per-token numbers for ``T`` tokens (all views of an image, in the model's order)."""

    top_words: torch.Tensor  # [T, k] long, most probable first
    top_probs: torch.Tensor  # [T, k] float
    entropy: torch.Tensor  # [T] nats
    #: [T, V'] probabilities, only when asked for (``keep_probs``): a probe's input
    probs: torch.Tensor | None = None

    @property
    def effective_words(self) -> torch.Tensor:
        """``exp(entropy)``: how many equally likely words carry the same uncertainty."""
        return self.entropy.exp()


@dataclass
class PatchWords:
    """What one image's visual tokens say in the visual vocabulary, and where each token sits."""

    stats: TokenStats
    boxes: torch.Tensor  # [T, 4] (left, top, right, bottom) in the original image's pixels
    views: torch.Tensor  # [T] view index: 0 the v1 square or, tiled, the global view (if any), then tiles
    image_size: tuple[int, int]  # (width, height)
    grid: tuple[int, int] | None  # tiled layout: (rows, cols); None: the v1 layout
    vocab_size: int  # V': words the head scores (indicator rows left out)
    tokenize_function: str
    tau: float
    tokens_per_view: int
    hidden_stride: int = 1
    #: [T, s^2 D] the head's input (the ViT's patch features, merged), when asked for
    features: torch.Tensor | None = field(default=None, repr=False)

    @property
    def has_global_view(self) -> bool:
        return self.grid is not None and self.grid[0] * self.grid[1] > 1

    @property
    def in_place(self) -> torch.Tensor:
        """[T] bool: tokens drawn in place on the image (the tiles, or the one v1 view; not the
        tiled layout's global view) and seeing some of the image (not only padding)."""
        area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        keep = area > 0
        if self.has_global_view:
            keep &= self.views > 0
        return keep

    @property
    def top_word(self) -> torch.Tensor:
        return self.stats.top_words[:, 0]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: per token its view, box, top words, probabilities, entropy."""
        stats = self.stats
        tokens = [
            {
                "view": int(self.views[t]),
                "box": [round(float(v), 2) for v in self.boxes[t]],
                "words": [int(w) for w in stats.top_words[t]],
                "probs": [round(float(p), 6) for p in stats.top_probs[t]],
                "entropy": round(float(stats.entropy[t]), 6),
                "effective_words": round(float(stats.effective_words[t]), 4),
            }
            for t in range(len(self.views))
        ]
        entropy = stats.entropy
        return {
            "image_size": list(self.image_size),
            "layout": "tiled" if self.grid is not None else "v1",
            "grid": list(self.grid) if self.grid is not None else None,
            "views": int(self.views.max()) + 1 if len(self.views) else 0,
            "tokens_per_view": self.tokens_per_view,
            "hidden_stride": self.hidden_stride,
            "vocab_size": self.vocab_size,
            "tokenize_function": self.tokenize_function,
            "tau": self.tau,
            "top_word_means": TOP_WORD_MEANS[self.tokenize_function],
            "entropy_unit": "nats",
            "summary": {
                "tokens": len(tokens),
                "distinct_top_words": int(self.top_word.unique().numel()),
                "mean_entropy": round(float(entropy.mean()), 6) if len(tokens) else None,
                "mean_effective_words": round(float(stats.effective_words.mean()), 4) if len(tokens) else None,
                "max_entropy": round(float(torch.log(torch.tensor(float(self.vocab_size)))), 6),
            },
            "tokens": tokens,
        }


TOP_WORD_MEANS = {
    "softmax": "the most probable word of the softmax the model embeds",
    "gumbel_argmax": "the argmax of the logits: the most likely Gumbel-max draw; probabilities are softmax(logits), "
    "each word's chance of being drawn (tau does not change it)",
    "st_argmax": "the argmax of the logits, the one word the model embeds; probabilities are the softmax its "
    "straight-through gradient uses",
}


def check_inspectable(model) -> None:
    """Refuse a model without a visual vocabulary (the MLP-adapter ablation)."""
    adapter = getattr(model.config, "adapter", "structural")
    if adapter != "structural":
        raise InspectError(
            f"this model uses the {adapter!r} adapter, which has no visual vocabulary: its head projects patch "
            "features straight to the LLM's width, so there are no visual words to inspect (inspect a model "
            "composed with adapter 'structural')"
        )


@torch.no_grad()
def word_stats(
    features: torch.Tensor,
    head: torch.nn.Sequential,
    *,
    top_k: int = 5,
    chunk_rows: int | None = None,
    keep_probs: bool = False,
) -> TokenStats:
    """``[T, s^2 D]`` head inputs -> per-token top-k words, probabilities and entropy.

    Chunked over the tokens as the lean visual path is: each chunk's ``[rows, V']`` logits are
    normalised in place and reduced to its top-k, its log-normaliser and its entropy
    (``H = logsumexp(z) - sum softmax(z) z``) before the next chunk. ``keep_probs`` also returns the
    full ``[T, V']`` probabilities (for a probe; that one is as large as it sounds).
    """
    linear, norm = head[0], head[1]
    words = linear.out_features
    k = max(1, min(top_k, words))
    rows = chunk_rows or chunk_rows_for(words)
    x = features.reshape(-1, features.shape[-1]).to(linear.weight.dtype)
    total = x.shape[0]
    ln_w = norm.weight.float() if norm.weight is not None else None
    ln_b = norm.bias.float() if norm.bias is not None else None
    top_words = torch.empty(total, k, dtype=torch.long, device=x.device)
    top_probs = torch.empty(total, k, dtype=torch.float32, device=x.device)
    entropy = torch.empty(total, dtype=torch.float32, device=x.device)
    probs = torch.empty(total, words, dtype=torch.float32, device=x.device) if keep_probs else None
    for start in range(0, total, rows):
        end = min(start + rows, total)
        z = torch.nn.functional.linear(x[start:end], linear.weight).float()
        # LayerNorm in place (as the fused path does): no second [rows, V'] tensor.
        mean = z.mean(dim=-1, keepdim=True)
        z.sub_(mean)
        rstd = torch.linalg.vector_norm(z, dim=-1, keepdim=True).square_().div_(words).add_(norm.eps).rsqrt_()
        z.mul_(rstd)
        if ln_w is not None:
            z.mul_(ln_w)
        if ln_b is not None:
            z.add_(ln_b)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        values, indices = z.topk(k, dim=-1)
        top_words[start:end] = indices
        top_probs[start:end] = (values - lse).exp()
        # H = lse - sum(p z): one more [rows, V'] buffer (p, then p * z in place).
        p = torch.sub(z, lse).exp_()
        if probs is not None:
            probs[start:end] = p
        entropy[start:end] = (lse.squeeze(-1) - p.mul_(z).sum(dim=-1)).clamp_min_(0.0)
    return TokenStats(top_words, top_probs, entropy, probs)


def _pixels(processor, image) -> tuple[torch.Tensor, tuple[int, int] | None]:
    if processor.tiler is not None:
        tiled = processor.tiler(image)
        return tiled.pixel_values, tuple(tiled.grid)
    return processor.image_processor([image]), None


def patch_words(
    model,
    processor,
    image: ImageInput,
    top_k: int = 5,
    *,
    keep_probs: bool = False,
    keep_features: bool = False,
    chunk_rows: int | None = None,
) -> PatchWords:
    """The visual words of every token of ``image``: top-k words and probabilities, entropy, and
    each token's box in the image's pixels (see :class:`PatchWords`).

    ``model`` is an ``OvisForCausalLM`` with the structural adapter (the MLP adapter is refused: it
    has no vocabulary) and ``processor`` its ``OvisProcessor`` (which decides the layout: v1's one
    square, or the tiled layout's global view and tiles). ``keep_probs`` / ``keep_features`` also
    keep the ``[T, V']`` probabilities / the ``[T, s^2 D]`` head inputs (a probe's inputs).
    """
    check_inspectable(model)
    if top_k < 1:
        raise InspectError(f"top_k must be 1 or more, got {top_k}")
    image = load_image(image)
    pixel_values, grid = _pixels(processor, image)
    tokenizer = model.visual_tokenizer
    parameter = next(tokenizer.backbone.parameters())
    with torch.no_grad():
        features = tokenizer.features(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
    stats = word_stats(features, tokenizer.head, top_k=top_k, chunk_rows=chunk_rows, keep_probs=keep_probs)
    spec = processor.image_processor.spec
    tiling = processor.tiling
    maps = view_maps(image.size, spec.image_size, spec.resize, grid, tiling.tile_resize if tiling else "pad")
    squares = token_square_boxes(spec.image_size, tokenizer.backbone.num_patches, tokenizer.hidden_stride)
    if len(maps) * len(squares) != features.shape[0] * features.shape[1]:
        raise InspectError(
            f"the processor made {len(maps)} view(s) of {len(squares)} tokens but the model returned "
            f"{features.shape[0]} of {features.shape[1]}: is this processor the model's own?"
        )
    boxes, views = token_boxes(maps, squares)
    return PatchWords(
        stats=_to_cpu(stats),
        boxes=boxes,
        views=views,
        image_size=image.size,
        grid=grid,
        vocab_size=tokenizer.head[0].out_features,
        tokenize_function=tokenizer.tokenize_function,
        tau=float(tokenizer.tau),
        tokens_per_view=len(squares),
        hidden_stride=tokenizer.hidden_stride,
        features=features.reshape(-1, features.shape[-1]).float().cpu() if keep_features else None,
    )


def _to_cpu(stats: TokenStats) -> TokenStats:
    return TokenStats(
        stats.top_words.cpu(),
        stats.top_probs.cpu(),
        stats.entropy.cpu(),
        stats.probs.cpu() if stats.probs is not None else None,
    )
