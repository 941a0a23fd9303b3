"""Where each visual token comes from: its box in the original image's pixel coordinates.

A view (the v1 layout's one square, or the tiled layout's global view and tiles) is the
encoder's ``S x S`` square filled from a region of the image by an affine map (a resize, then a
centred pad or crop); a token covers one patch of that square, or ``s x s`` patches with
``hidden_stride`` s > 1 (the grid padded at the bottom and right, so a token of the last row or
column may cover fewer). Inverting the map gives each token's box in the image; a token that sees
only padding gets an empty box (``inside`` False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ovis.interfaces.image import pad_resize_shape
from ovis.tiling import Grid, split_boxes

Box = tuple[float, float, float, float]  # (left, top, right, bottom)


@dataclass(frozen=True)
class ViewMap:
    """Square coordinates -> image coordinates: ``x_image = offset_x + x_square * scale_x`` (same in
    y), clipped to ``region``, the part of the image the view shows."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    region: Box

    def box(self, square_box: Box) -> Box:
        left, top, right, bottom = square_box
        x0, y0, x1, y1 = self.region
        return (
            min(max(self.offset_x + left * self.scale_x, x0), x1),
            min(max(self.offset_y + top * self.scale_y, y0), y1),
            min(max(self.offset_x + right * self.scale_x, x0), x1),
            min(max(self.offset_y + bottom * self.scale_y, y0), y1),
        )


def fitted_view(region: Box, side: int, resize: str) -> ViewMap:
    """The map of a view made from ``region`` of the image by ``resize`` (pad, squash or crop) to a
    ``side`` square, exactly as :class:`ovis.interfaces.ImageProcessor` does it."""
    x0, y0, x1, y1 = region
    width, height = round(x1 - x0), round(y1 - y0)
    if resize == "squash":
        sx, sy = width / side, height / side
        return ViewMap(sx, sy, x0, y0, region)
    if resize == "crop":
        scale = side / min(width, height)
        new_w, new_h = max(side, round(width * scale)), max(side, round(height * scale))
        left, top = (new_w - side) // 2, (new_h - side) // 2
        sx, sy = width / new_w, height / new_h
        return ViewMap(sx, sy, x0 + left * sx, y0 + top * sy, region)
    new_w, new_h = pad_resize_shape(width, height, side)
    left, top = (side - new_w) // 2, (side - new_h) // 2
    sx, sy = width / new_w, height / new_h
    return ViewMap(sx, sy, x0 - left * sx, y0 - top * sy, region)


def view_maps(
    image_size: tuple[int, int], side: int, resize: str, grid: Grid | None, tile_resize: str = "pad"
) -> list[ViewMap]:
    """The maps of an image's views in the order the model sees them: one for the v1 layout
    (``grid`` None); in the tiled layout the global view first (when there is more than one tile),
    then the tiles row by row (see :mod:`ovis.tiling`)."""
    width, height = image_size
    whole: Box = (0.0, 0.0, float(width), float(height))
    if grid is None:
        return [fitted_view(whole, side, resize)]
    rows, cols = grid
    if tile_resize == "pad":
        tiles = [fitted_view(tuple(float(v) for v in box), side, "pad") for box in split_boxes(width, height, grid)]
        global_view = fitted_view(whole, side, "pad")
    else:  # canvas: the image squashed to cols*side x rows*side, then cut into squares
        sx, sy = width / (cols * side), height / (rows * side)
        tiles = []
        for r in range(rows):
            for c in range(cols):
                region = (c * side * sx, r * side * sy, (c + 1) * side * sx, (r + 1) * side * sy)
                tiles.append(ViewMap(sx, sy, c * side * sx, r * side * sy, region))
        global_view = fitted_view(whole, side, "squash")
    return [global_view, *tiles] if len(tiles) > 1 else tiles


def token_square_boxes(side: int, num_patches: int, stride: int) -> list[Box]:
    """Each token's box in the ``side`` square, row-major: one patch each, or ``stride x stride``
    patches (clipped at the grid's edge, as :func:`ovis.model.visual_tokenizer.merge_patches` pads)."""
    per_side = math.isqrt(num_patches)
    patch = side / per_side
    blocks = -(-per_side // stride)
    boxes = []
    for br in range(blocks):
        for bc in range(blocks):
            r0, c0 = br * stride, bc * stride
            r1, c1 = min(r0 + stride, per_side), min(c0 + stride, per_side)
            boxes.append((c0 * patch, r0 * patch, c1 * patch, r1 * patch))
    return boxes


def token_boxes(maps: list[ViewMap], square_boxes: list[Box]) -> tuple[torch.Tensor, torch.Tensor]:
    """``([views * tokens, 4] boxes in image pixels, [views * tokens] view index)``."""
    boxes = [view.box(square) for view in maps for square in square_boxes]
    views = [index for index in range(len(maps)) for _ in square_boxes]
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(views, dtype=torch.long)
