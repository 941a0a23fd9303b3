"""Putting image blocks into token sequences.

The processor expands each ``<image>`` into a run of ``num_image_tokens`` positions holding
``IMAGE_TOKEN_ID``; the model fills those runs, in order, with the rows of each image's block.
One ``masked_scatter`` does the whole batch: no per-sample or per-token Python loop.
"""

from __future__ import annotations

import torch

from ovis.errors import OvisError

IMAGE_TOKEN_ID = -200
IGNORE_INDEX = -100


class ImageCountError(OvisError, ValueError):
    """The image positions in the tokens do not match the images given."""


def merge_image_embeddings(
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_embeds: torch.Tensor | None,
    block: int,
) -> torch.Tensor:
    """Replace the ``IMAGE_TOKEN_ID`` positions of ``text_embeds`` ``[B, L, H]`` by the rows of
    ``image_embeds`` ``[num_images, block, H]`` (images in batch order, then in order within a
    sample)."""
    mask = input_ids == IMAGE_TOKEN_ID
    positions = int(mask.sum())
    images = 0 if image_embeds is None else image_embeds.shape[0]
    if positions == 0 and images == 0:
        return text_embeds
    if image_embeds is None or positions != images * block:
        blocks = f"{positions // block} image block(s)" if positions % block == 0 else (
            f"{positions} image positions, not a whole number of {block}-position blocks"
        )
        raise ImageCountError(
            f"the tokens hold {blocks} but {images} image(s) were given; each <image> in the text "
            "needs exactly one image, and the tokens must come from this model's processor"
        )
    return text_embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(text_embeds.dtype))
