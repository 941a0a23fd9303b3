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

# The tiled layout's five indicator positions (the Ovis 1.6 / Ovis2 release's ids): image begin, the
# end of the global view (the grid begins), between two tiles of a row, between rows, image end.
# Indicator ``k`` is filled with the visual embedding table's row ``V - 5 + k``.
BEGIN_INDICATOR, GRID_INDICATOR, COLUMN_INDICATOR, ROW_INDICATOR, END_INDICATOR = INDICATOR_IDS = (
    -301, -302, -303, -304, -305,
)


class ImageCountError(OvisError, ValueError):
    """The image positions in the tokens do not match the images given."""


def merge_image_embeddings(
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_embeds: torch.Tensor | None,
    block: int,
    unit: str = "image",
) -> torch.Tensor:
    """Replace the ``IMAGE_TOKEN_ID`` positions of ``text_embeds`` ``[B, L, H]`` by the rows of
    ``image_embeds`` ``[num_images, block, H]`` (images in batch order, then in order within a
    sample). In the tiled layout the rows are views (``unit="view"``: tiles and global views)."""
    mask = input_ids == IMAGE_TOKEN_ID
    positions = int(mask.sum())
    images = 0 if image_embeds is None else image_embeds.shape[0]
    if positions == 0 and images == 0:
        return text_embeds
    if image_embeds is None or positions != images * block:
        blocks = f"{positions // block} {unit} block(s)" if positions % block == 0 else (
            f"{positions} image positions, not a whole number of {block}-position blocks"
        )
        raise ImageCountError(
            f"the tokens hold {blocks} but {images} {unit}(s) were given; each <image> in the text "
            "needs exactly one image, and the tokens must come from this model's processor"
        )
    return text_embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(text_embeds.dtype))


def indicator_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """Where ``input_ids`` hold one of :data:`INDICATOR_IDS`."""
    return (input_ids <= INDICATOR_IDS[0]) & (input_ids >= INDICATOR_IDS[-1])


def merge_indicator_embeddings(
    embeds: torch.Tensor, input_ids: torch.Tensor, indicator_rows: torch.Tensor
) -> torch.Tensor:
    """Fill the indicator positions of ``embeds`` ``[B, L, H]`` with ``indicator_rows`` ``[5, H]``
    (row ``k`` for id ``INDICATOR_IDS[k]``)."""
    mask = indicator_mask(input_ids)
    if not bool(mask.any()):
        return embeds
    index = (INDICATOR_IDS[0] - input_ids).clamp(0, len(INDICATOR_IDS) - 1)
    return torch.where(mask.unsqueeze(-1), indicator_rows.to(embeds.dtype)[index], embeds)
