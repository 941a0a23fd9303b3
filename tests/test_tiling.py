"""The tiled image layout (ovis.tiling) against transformers' Ovis2 image processor and processor.

transformers' ``models/ovis2`` is an independent implementation of the Ovis2 layout: its grid rule
(``get_min_tile_covering_grid``), its ``canvas`` tiling (``Ovis2ImageProcessor`` /
``Ovis2ImageProcessorPil`` with ``crop_to_patches``) and its placeholder expansion
(``Ovis2Processor.replace_image_token``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from ovis.errors import ConfigError
from ovis.interfaces import ImagePreprocessSpec, ImageProcessor
from ovis.model.merging import IMAGE_TOKEN_ID, INDICATOR_IDS
from ovis.tiling import (
    Tiler,
    TilingOptions,
    block_length,
    choose_grid,
    coverage,
    image_block,
    num_views,
    split_boxes,
)

ovis2_images = pytest.importorskip("transformers.models.ovis2.image_processing_ovis2")
ovis2_pil = pytest.importorskip("transformers.models.ovis2.image_processing_pil_ovis2")

SIDE = 448
#: (width, height): squares, landscapes, portraits, extreme strips, tiny and page-sized images
SIZES = [
    (448, 448),
    (449, 449),
    (896, 896),
    (500, 500),
    (1400, 1400),
    (2000, 2000),
    (1000, 300),
    (300, 1000),
    (1920, 1080),
    (1080, 1920),
    (640, 480),
    (1200, 900),
    (1600, 1200),
    (900, 1400),
    (800, 1600),
    (1344, 448),
    (3000, 1000),
    (4000, 500),
    (5000, 300),
    (333, 777),
    (2480, 3508),
    (100, 50),
    (37, 901),
    (1024, 768),
]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 7919 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("max_partition", [1, 4, 9, 12])
def test_grids_equal_transformers_rule_on_the_table(max_partition):
    for width, height in SIZES:
        ours = choose_grid(width, height, SIDE, max_partition, 0.9)
        theirs = ovis2_images.get_min_tile_covering_grid((height, width), SIDE, max_partition, 0.9)
        assert ours == tuple(theirs), (width, height, max_partition)
        assert ours[0] * ours[1] <= max_partition


def test_grids_follow_the_aspect_ratio():
    assert choose_grid(1000, 300, SIDE, 9) == (1, 3)  # wide: one row of three tiles
    assert choose_grid(300, 1000, SIDE, 9) == (3, 1)
    assert choose_grid(400, 400, SIDE, 9) == (1, 1)  # fits one tile whole
    assert choose_grid(5000, 300, SIDE, 9) == (1, 9)  # nothing covers 90%: the best coverage
    assert coverage(1000, 300, (1, 3), SIDE) == 1.0
    assert split_boxes(1000, 300, (1, 3)) == [(0, 0, 333, 300), (333, 0, 666, 300), (666, 0, 1000, 300)]


def test_covering_threshold_trades_tiles_for_coverage():
    # 1000 x 700 at 448: 2x2 covers 80%, 2x3 all of it; a threshold of 0.75 settles for 2x2.
    assert round(coverage(1000, 700, (2, 2), SIDE), 3) == 0.803
    assert choose_grid(1000, 700, SIDE, 9, 0.9) == (2, 3)
    assert choose_grid(1000, 700, SIDE, 9, 0.75) == (2, 2)


def test_canvas_tiles_equal_transformers_pil_processor_exactly():
    """``canvas`` tiling equals Ovis2ImageProcessorPil bit for bit, on the grid transformers used."""
    ours = Tiler(ImagePreprocessSpec(image_size=SIDE), TilingOptions(tile_resize="canvas"))
    theirs = ovis2_pil.Ovis2ImageProcessorPil(crop_to_patches=True, max_patches=9, size={"height": SIDE, "width": SIDE})
    for width, height in SIZES:
        image = _image(width, height)
        out = theirs(image, return_tensors="pt")
        grid = tuple(out["grids"][0].tolist())
        tiled = ours(image, grid=grid)
        assert tiled.pixel_values.shape == out["pixel_values"].shape, (width, height)
        assert torch.equal(tiled.pixel_values, out["pixel_values"]), (width, height)


def test_canvas_tiles_match_transformers_torchvision_processor_within_two_levels():
    """The default (torchvision) Ovis2ImageProcessor resizes with torchvision's antialiased bicubic:
    a few values differ from Pillow's by at most 2 of 255 levels (measured: ~0.5% of values)."""
    spec = ImagePreprocessSpec(image_size=SIDE)
    ours = Tiler(spec, TilingOptions(tile_resize="canvas"))
    theirs = ovis2_images.Ovis2ImageProcessor(crop_to_patches=True, max_patches=9, size={"height": SIDE, "width": SIDE})
    scale = torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    differing = total = 0
    for width, height in SIZES:
        image = _image(width, height)
        out = theirs(image, return_tensors="pt")
        grid = tuple(out["grids"][0].tolist())
        levels = ((ours(image, grid=grid).pixel_values - out["pixel_values"]) * scale).abs()
        assert levels.max() <= 2.0 + 1e-4, (width, height)
        differing += int((levels > 0.5).sum())
        total += levels.numel()
    assert differing / total < 0.02


def test_transformers_processor_swaps_rows_and_columns():
    """transformers 5.x's Ovis2ImageProcessor unpacks the ``(rows, cols)`` its grid rule returns as
    ``(cols, rows)``: a wide image goes onto a tall canvas. ovis uses the grid as chosen (as the
    AIDC-AI releases do); docs/high-resolution.md says so. If this fails, transformers fixed it:
    update that page."""
    theirs = ovis2_images.Ovis2ImageProcessor(crop_to_patches=True, max_patches=9, size={"height": SIDE, "width": SIDE})
    for width, height in [(1000, 300), (1920, 1080), (300, 1000)]:
        grid = choose_grid(width, height, SIDE, 9)
        reported = tuple(theirs(_image(width, height), return_tensors="pt")["grids"][0].tolist())
        assert reported == grid[::-1] != grid


def test_pad_tiles_are_crops_through_the_v1_pad_preprocessing():
    """``pad`` (the releases): global view first, then each cell cropped from the original and
    preprocessed as v1 does (long side to the square, short side truncated, zero-padded)."""
    spec = ImagePreprocessSpec(image_size=64, resize="squash")  # the tiler pads whatever the spec says
    tiler = Tiler(spec, TilingOptions(max_partition=9))
    pad = ImageProcessor(spec.model_copy(update={"resize": "pad"}))
    image = _image(300, 100)
    tiled = tiler(image)
    assert tiled.grid == choose_grid(300, 100, 64, 9) == (2, 4)
    views = [image, *(image.crop(box) for box in split_boxes(300, 100, tiled.grid))]
    assert tiled.pixel_values.shape == (9, 3, 64, 64)
    for got, view in zip(tiled.pixel_values, views, strict=True):
        assert torch.equal(got, pad.preprocess_one(view))
    # the global view of a 3:1 image: 64 x int(100 / 300 * 64) = 21 rows, zero-padded above and below
    assert torch.count_nonzero(tiled.pixel_values[0][:, :21].abs().sum(0).sum(1)) == 0
    single = tiler(_image(40, 30))
    assert single.grid == (1, 1) and single.pixel_values.shape == (1, 3, 64, 64)
    assert torch.equal(single.pixel_values[0], pad.preprocess_one(_image(40, 30)))


def _transformers_block(grid: tuple[int, int], tokens: int) -> list[int]:
    """Ovis2Processor's placeholder string for ``grid``, as ovis ids."""
    from transformers.models.ovis2.processing_ovis2 import Ovis2Processor

    names = {
        "IMG_START": INDICATOR_IDS[0],
        "IMG_GRID": INDICATOR_IDS[1],
        "IMG_COL": INDICATOR_IDS[2],
        "IMG_ROW": INDICATOR_IDS[3],
        "IMG_END": INDICATOR_IDS[4],
        "IMG_ATOM": IMAGE_TOKEN_ID,
    }
    processor = Ovis2Processor.__new__(Ovis2Processor)  # replace_image_token reads image_seq_length only
    processor.image_seq_length = tokens
    text = processor.replace_image_token({"grids": torch.tensor([grid])}, 0)
    parsed = re.findall(r"<(IMG_[A-Z]+)>", text)
    assert "".join(f"<{name}>" for name in parsed) == text
    return [names[name] for name in parsed]


@pytest.mark.parametrize("tokens", [1, 4, 256])
def test_image_blocks_equal_transformers_placeholder_expansion(tokens):
    grids = {choose_grid(w, h, SIDE, m) for w, h in SIZES for m in (1, 4, 9, 12)} | {(2, 3), (3, 2), (4, 3)}
    assert len(grids) >= 10
    for grid in sorted(grids):
        block = image_block(grid, tokens)
        assert block == _transformers_block(grid, tokens), grid
        assert len(block) == block_length(grid, tokens)
        assert block.count(IMAGE_TOKEN_ID) == tokens * num_views(grid)


def test_image_block_layout():
    b, g, c, r, e = INDICATOR_IDS
    t = IMAGE_TOKEN_ID
    assert image_block((1, 1), 2) == [b, t, t, g, e]
    assert image_block((2, 2), 1) == [b, t, g, t, c, t, r, t, c, t, e]


def test_bad_tiling_options_are_named():
    with pytest.raises(ConfigError, match="max_partition"):
        TilingOptions(max_partition=0)
    with pytest.raises(ConfigError, match="covering_threshold"):
        TilingOptions(covering_threshold=1.5)
    with pytest.raises(ConfigError, match="tile_resize must be one of pad, canvas"):
        TilingOptions(tile_resize="crop")
    with pytest.raises(ConfigError, match="unknown field"):
        TilingOptions.from_dict({"max_partitions": 9})
    assert TilingOptions.from_dict(TilingOptions(max_partition=4).to_dict()) == TilingOptions(max_partition=4)


def test_a_tiled_processor_equals_transformers_ovis2_processor_end_to_end(toy_processor):
    """OvisProcessor (tiled, ``canvas``) and transformers' Ovis2Processor (PIL backend, its special
    tokens added to the same toy tokenizer) on the table's shapes scaled to a 32 px encoder: the same
    image span (ids mapped one to one) and the same pixels, on transformers' grid, which is ovis's
    grid transposed for images that are not square-gridded (its swap, above)."""
    from transformers.models.ovis2.processing_ovis2 import Ovis2Processor

    from ovis.processing import OvisProcessor

    side, tokens = 32, 4
    spec = toy_processor.image_processor.spec
    ours = OvisProcessor(
        tokenizer=toy_processor.tokenizer,
        image_processor=toy_processor.image_processor,
        chat_format=toy_processor.chat_format,
        num_image_tokens=18,
        max_length=4096,
        tiling=TilingOptions(max_partition=9, tile_resize="canvas"),
        tokens_per_tile=tokens,
    )
    tokenizer = toy_processor.tokenizer.__class__(tokenizer_object=toy_processor.tokenizer.backend_tokenizer)
    names = ["<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>", "<IMG_ATOM>"]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", *names]})
    to_ovis = dict(zip(tokenizer.convert_tokens_to_ids(names), [*INDICATOR_IDS, IMAGE_TOKEN_ID], strict=True))
    image_processor = ovis2_pil.Ovis2ImageProcessorPil(
        crop_to_patches=True,
        max_patches=9,
        size={"height": side, "width": side},
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )
    theirs = Ovis2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens)
    swapped = 0
    for width, height in SIZES:
        image = _image(max(1, width // 14), max(1, height // 14))
        out = theirs(images=[image], text="<image>\ndescribe", return_tensors="pt")
        span = [to_ovis[i] for i in out["input_ids"][0].tolist() if i in to_ovis]
        sample = ours.encode([{"role": "user", "content": "<image>\ndescribe"}], [image])
        grid = sample.grids[0]
        if grid != grid[::-1]:
            swapped += 1
            assert span == image_block(grid[::-1], tokens), (width, height)
            assert torch.equal(out["pixel_values"], ours.tiler(image, grid=grid[::-1]).pixel_values)
            continue
        start = sample.input_ids.index(INDICATOR_IDS[0])
        assert span == sample.input_ids[start : start + len(span)], (width, height)
        assert torch.equal(out["pixel_values"], sample.pixel_values), (width, height)
    assert 0 < swapped < len(SIZES)


def test_max_partition_is_capped_and_the_grid_search_stays_small():
    """An absurd max_partition once hung every image request (the search went over N x N grids)."""
    import time

    from ovis.errors import ConfigError
    from ovis.model.configuration_ovis import MAX_PARTITION_LIMIT
    from ovis.tiling import TilingOptions, candidate_grids

    with pytest.raises(ConfigError, match=r"max_partition 100000 is over 64 tiles per image"):
        TilingOptions(max_partition=100000)
    started = time.perf_counter()
    grids = candidate_grids(MAX_PARTITION_LIMIT)
    assert time.perf_counter() - started < 1.0
    assert len(grids) == sum(MAX_PARTITION_LIMIT // r for r in range(1, MAX_PARTITION_LIMIT + 1))
    assert all(r * c <= MAX_PARTITION_LIMIT for r, c in grids)
