"""The high-resolution image layout of Ovis 1.6 / Ovis2: a grid of tiles plus a global view.

An image is cut into ``rows x cols`` tiles (``rows * cols <= max_partition``), each fitted to the
vision encoder's square; with more than one tile a view of the whole image comes first. Its block
of positions in the token sequence is::

    BEGIN  global  GRID  tile COL tile COL tile  ROW  tile COL ...  END

(the global view alone, ``BEGIN tile GRID END``, when the grid is 1 x 1), where each ``tile`` is
``tokens_per_tile`` image positions and the five indicators (:data:`ovis.model.merging.INDICATOR_IDS`)
are filled from the visual embedding table's last five rows.

**Choosing the grid.** For every candidate grid the image is split into equal cells (the last row
and column take the remainder), each cell is scaled down, aspect kept, until its long side fits the
encoder's side (never up), and the covered areas are summed as a share of the image's area. Among
grids covering more than ``covering_threshold`` the one with the fewest tiles wins (ties: the
better coverage, then the first in (rows, cols) order); when none does, the best coverage (ties:
fewer tiles). This is the AIDC-AI Ovis 1.6 / Ovis2 release's rule, and transformers'
``get_min_tile_covering_grid``.

**Fitting each view to the square** (``tile_resize``):

- ``pad`` (default; the Ovis 1.6 / Ovis2 releases): the cells are cropped from the original image
  and each view (cells and global) goes through v1's ``pad`` preprocessing: long side to the square's
  side, short side ``int(short / long * side)``, normalised, zero-padded centred.
- ``canvas`` (transformers' ``Ovis2ImageProcessor`` with ``crop_to_patches``): the whole image is
  resized, aspect ignored, to ``cols * side`` x ``rows * side`` and cut into squares; the global
  view is the whole image resized to ``side x side``. Resizing is Pillow's, as transformers' PIL
  backend does it. Note: transformers 5.x unpacks the grid it chooses as ``(cols, rows)`` although
  it was computed as ``(rows, cols)``, so it lays a wide image on a tall canvas (see
  docs/high-resolution.md); ovis uses the grid as chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image

from ovis.errors import ConfigError
from ovis.interfaces import ImagePreprocessSpec, ImageProcessor
from ovis.interfaces.image import ImageInput, load_image
from ovis.model.configuration_ovis import check_tiling
from ovis.model.merging import (
    BEGIN_INDICATOR,
    COLUMN_INDICATOR,
    END_INDICATOR,
    GRID_INDICATOR,
    IMAGE_TOKEN_ID,
    ROW_INDICATOR,
)

Grid = tuple[int, int]  # (rows, cols)
Box = tuple[int, int, int, int]  # (left, top, right, bottom)


@dataclass(frozen=True)
class TilingOptions:
    """How images are tiled: at most ``max_partition`` tiles, the coverage a grid must beat to be
    chosen for fewer tiles, and how each view is fitted to the encoder's square (see the module)."""

    max_partition: int = 9
    covering_threshold: float = 0.9
    tile_resize: str = "pad"

    def __post_init__(self) -> None:
        check_tiling(self.max_partition, self.covering_threshold, self.tile_resize)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TilingOptions:
        unknown = set(data) - {"max_partition", "covering_threshold", "tile_resize"}
        if unknown:
            raise ConfigError(
                f"tiling: unknown field(s) {', '.join(sorted(unknown))}; expected max_partition, "
                "covering_threshold, tile_resize"
            )
        return cls(**data)


# -- the grid ----------------------------------------------------------------------------------------
def candidate_grids(max_partition: int) -> list[Grid]:
    """Every ``(rows, cols)`` with ``rows * cols <= max_partition``, rows outer, cols inner."""
    return [(r, c) for r in range(1, max_partition + 1) for c in range(1, max_partition // r + 1)]


def split_boxes(width: int, height: int, grid: Grid) -> list[Box]:
    """The cells of ``grid`` over a ``width x height`` image, row by row; the last row and column
    take what the integer division leaves over."""
    rows, cols = grid
    cell_h, cell_w = height // rows, width // cols
    return [
        (
            c * cell_w,
            r * cell_h,
            width if c == cols - 1 else (c + 1) * cell_w,
            height if r == rows - 1 else (r + 1) * cell_h,
        )
        for r in range(rows)
        for c in range(cols)
    ]


def covered_area(box: Box, side: int) -> float:
    """The area a cell keeps once scaled (never up) so that its long side fits ``side``."""
    long, short = max(box[2] - box[0], box[3] - box[1]), min(box[2] - box[0], box[3] - box[1])
    if long > side:
        return side * (short / long * side)
    return float(long * short)


def coverage(width: int, height: int, grid: Grid, side: int) -> float:
    """The share of the image's area that ``grid``'s tiles keep at the encoder's resolution."""
    return sum(covered_area(box, side) for box in split_boxes(width, height, grid)) / (width * height)


def choose_grid(width: int, height: int, side: int, max_partition: int, covering_threshold: float = 0.9) -> Grid:
    """The ``(rows, cols)`` grid for a ``width x height`` image (the rule in the module docstring)."""
    scored = [(grid, coverage(width, height, grid, side)) for grid in candidate_grids(max_partition)]
    good = [item for item in scored if item[1] > covering_threshold]
    if good:
        return min(good, key=lambda item: (item[0][0] * item[0][1], -item[1]))[0]
    return min(scored, key=lambda item: (-item[1], item[0][0] * item[0][1]))[0]


def num_views(grid: Grid) -> int:
    """Views an image of this grid sends through the encoder: its tiles, plus the global view when
    there is more than one tile."""
    tiles = grid[0] * grid[1]
    return tiles + 1 if tiles > 1 else 1


# -- the token block ------------------------------------------------------------------------------------
def image_block(grid: Grid, tokens_per_tile: int) -> list[int]:
    """The positions of one image in the token sequence: indicator ids and ``IMAGE_TOKEN_ID`` runs."""
    view = [IMAGE_TOKEN_ID] * tokens_per_tile
    block = [BEGIN_INDICATOR, *view, GRID_INDICATOR]
    rows, cols = grid
    if rows * cols > 1:
        for r in range(rows):
            for c in range(cols):
                block += view
                if c < cols - 1:
                    block.append(COLUMN_INDICATOR)
            if r < rows - 1:
                block.append(ROW_INDICATOR)
    block.append(END_INDICATOR)
    return block


def block_length(grid: Grid, tokens_per_tile: int) -> int:
    """``len(image_block(grid, tokens_per_tile))`` without building it."""
    rows, cols = grid
    if rows * cols == 1:
        return tokens_per_tile + 3
    return 3 + tokens_per_tile * (rows * cols + 1) + rows * (cols - 1) + (rows - 1)


# -- pixels ---------------------------------------------------------------------------------------------
@dataclass
class TiledImage:
    """One image's views ``[num_views, 3, S, S]`` (global view first when tiled) and its grid."""

    pixel_values: torch.Tensor
    grid: Grid


class Tiler:
    """Cuts images into normalised tiles for one encoder (its ``ImagePreprocessSpec``)."""

    def __init__(self, spec: ImagePreprocessSpec, options: TilingOptions) -> None:
        self.spec = spec
        self.options = options
        self._pad = ImageProcessor(spec.model_copy(update={"resize": "pad"}))
        self._squash = ImageProcessor(spec.model_copy(update={"resize": "squash"}))
        self._mean = torch.tensor(spec.mean).view(3, 1, 1)
        self._std = torch.tensor(spec.std).view(3, 1, 1)
        self._resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[
            spec.interpolation
        ]

    @property
    def side(self) -> int:
        return self.spec.image_size

    def grid_for(self, width: int, height: int) -> Grid:
        return choose_grid(width, height, self.side, self.options.max_partition, self.options.covering_threshold)

    def __call__(self, image: ImageInput, grid: Grid | None = None) -> TiledImage:
        """Tile one image (``grid``: use this grid instead of choosing one)."""
        image = load_image(image)
        grid = grid or self.grid_for(*image.size)
        if self.options.tile_resize == "pad":
            views = [image.crop(box) for box in split_boxes(*image.size, grid)]
            if len(views) > 1:
                views.insert(0, image)
            return TiledImage(torch.stack([self._pad.preprocess_one(view) for view in views]), grid)
        return TiledImage(self._canvas(image, grid), grid)

    def _canvas(self, image: Image.Image, grid: Grid) -> torch.Tensor:
        rows, cols, side = grid[0], grid[1], self.side
        canvas = self._normalise(image.resize((cols * side, rows * side), self._resample))
        tiles = [
            canvas[:, r * side : (r + 1) * side, c * side : (c + 1) * side] for r in range(rows) for c in range(cols)
        ]
        if len(tiles) > 1:
            tiles.insert(0, self._squash.preprocess_one(image))
        return torch.stack(tiles)

    def _normalise(self, image: Image.Image) -> torch.Tensor:
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = data.view(image.height, image.width, 3).permute(2, 0, 1).float().div_(255.0)
        return (pixels - self._mean) / self._std

    def tile_all(self, images: Sequence[ImageInput]) -> list[TiledImage]:
        return [self(image) for image in images]
