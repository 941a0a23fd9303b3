"""Image loading and preprocessing: modes, broken files, and the three resize policies."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from ovis.interfaces import ImageError, ImagePreprocessSpec, ImageProcessor, load_image


def test_missing_and_non_image_files_are_named(tmp_path):
    with pytest.raises(ImageError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.jpg: not a readable image"):
        load_image(text)


def test_truncated_image_is_caught_on_load(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg: image data is truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "1", "LA"])
def test_other_modes_become_rgb(mode):
    assert load_image(Image.new(mode, (5, 5))).mode == "RGB"


def test_transparent_pixels_become_white_not_black():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_pad_policy_matches_a_hand_computed_expectation():
    """4x2 pure red, size 4: no resize, normalise with mean/std 0.5, then zero rows top and bottom."""
    spec = ImagePreprocessSpec(image_size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="pad")
    pixels = ImageProcessor(spec)([Image.new("RGB", (4, 2), (255, 0, 0))])[0]
    expected = torch.zeros(3, 4, 4)
    expected[0, 1:3] = 1.0   # red channel: (1 - 0.5) / 0.5
    expected[1:, 1:3] = -1.0  # green and blue: (0 - 0.5) / 0.5
    assert torch.equal(pixels, expected)


def test_pad_policy_keeps_aspect_and_centres():
    spec = ImagePreprocessSpec(image_size=8, mean=(0, 0, 0), std=(1, 1, 1), resize="pad")
    pixels = ImageProcessor(spec)([Image.new("RGB", (16, 8), "white")])[0]
    assert torch.allclose(pixels[:, 2:6], torch.ones(3, 4, 8))  # 16x8 -> 8x4, centred vertically
    assert torch.equal(pixels[:, :2], torch.zeros(3, 2, 8)) and torch.equal(pixels[:, 6:], torch.zeros(3, 2, 8))


@pytest.mark.parametrize("resize", ["pad", "crop", "squash"])
def test_every_policy_gives_the_square_size(resize):
    spec = ImagePreprocessSpec(image_size=12, resize=resize)
    out = ImageProcessor(spec)([Image.new("RGB", (31, 7), "blue"), Image.new("RGB", (5, 40), "red")])
    assert out.shape == (2, 3, 12, 12) and out.dtype == torch.float32
