"""load_image turns every Pillow mode a user may hand in into the RGB it shows: high bit depths
scaled (not clipped to white), transparency on white, EXIF orientation applied."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ovis.interfaces import ImagePreprocessSpec, ImageProcessor, load_image

MID = (128, 128, 128)


def _palette(mode: str) -> Image.Image:
    image = Image.new(mode, (3, 2), (0, 255) if mode == "PA" else 0)
    image.putpalette([128, 128, 128] + [0, 0, 0] * 255)
    return image


MID_GREY = {
    "L": lambda: Image.new("L", (3, 2), 128),
    "LA": lambda: Image.new("LA", (3, 2), (128, 255)),
    "P": lambda: _palette("P"),
    "PA": lambda: _palette("PA"),
    "RGB": lambda: Image.new("RGB", (3, 2), MID),
    "RGBA": lambda: Image.new("RGBA", (3, 2), (*MID, 255)),
    "CMYK": lambda: Image.new("CMYK", (3, 2), (0, 0, 0, 127)),
    "YCbCr": lambda: Image.new("YCbCr", (3, 2), (128, 128, 128)),
    "I;16": lambda: Image.new("I;16", (3, 2), 32896),      # 128 * 257
    "I;16 half": lambda: Image.new("I;16", (3, 2), 32768),  # 127.5, rounded
    "I;16B": lambda: Image.new("I;16B", (3, 2), 32896),
    "I;16L": lambda: Image.new("I;16L", (3, 2), 32896),
    "I": lambda: Image.new("I", (3, 2), 32896),            # a 16-bit file as Pillow 10 opens it
    "F": lambda: Image.new("F", (3, 2), 0.5),               # 0-1 floats
}


@pytest.mark.parametrize("case", list(MID_GREY))
def test_mid_grey_stays_mid_grey_in_every_mode(case):
    image = load_image(MID_GREY[case]())
    assert image.mode == "RGB" and image.size == (3, 2)
    assert image.getpixel((1, 1)) == MID


def test_one_bit_images_are_black_and_white():
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    out = load_image(image)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_uses_the_whole_range(mode):
    image = Image.new(mode, (3, 1))
    for x, value in enumerate((0, 257 * 64, 65535)):
        image.putpixel((x, 0), value)
    out = load_image(image)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 64, 255]


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_a_sixteen_bit_file_is_mid_grey_not_white(tmp_path, suffix):
    path = tmp_path / f"deep.{suffix}"
    Image.new("I;16", (4, 4), 32896).save(path)
    assert load_image(path).getpixel((2, 2)) == MID


def test_a_sixteen_bit_image_is_normalised_like_its_eight_bit_twin():
    processor = ImageProcessor(ImagePreprocessSpec(image_size=4, mean=(0, 0, 0), std=(1, 1, 1)))
    deep, plain = processor([Image.new("I;16", (4, 4), 32896), Image.new("L", (4, 4), 128)])
    assert torch.equal(deep, plain) and abs(deep.mean().item() - 128 / 255) < 1e-6


def test_wide_integer_and_float_ranges_are_stretched_from_their_min_and_max():
    wide = Image.new("I", (3, 1))
    for x, value in enumerate((-100_000, 0, 100_000)):
        wide.putpixel((x, 0), value)
    assert [load_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    floats = Image.new("F", (3, 1))
    for x, value in enumerate((-1.0, 1.0, 3.0)):
        floats.putpixel((x, 0), value)
    assert [load_image(floats).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P"])
def test_transparent_pixels_become_white(mode):
    if mode == "P":
        image = _palette("P")
        image.info["transparency"] = 0
    elif mode == "PA":
        image = _palette("PA")
        image.putpixel((0, 0), (0, 0))
    else:
        image = Image.new(mode, (3, 2), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    """Stored 4x2, left half red and right half blue, tagged "rotate 90 clockwise to view" (6):
    it comes out 2x4 with red on top."""
    stored = Image.new("RGB", (4, 2), "red")
    stored.paste((0, 0, 255), (2, 0, 4, 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.png"
    stored.save(path, exif=exif)
    upright = load_image(path)
    assert upright.size == (2, 4)
    assert upright.getpixel((0, 0)) == (255, 0, 0) and upright.getpixel((1, 3)) == (0, 0, 255)


def test_an_image_without_orientation_is_left_as_stored(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 2), "red").save(path)
    assert load_image(path).size == (4, 2)


def test_denormalise_gives_back_the_pixels_normalised():
    import random

    import numpy as np

    rng = random.Random(0)
    spec = ImagePreprocessSpec(image_size=5, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), resize="squash")
    processor = ImageProcessor(spec)
    image = Image.new("RGB", (5, 5))
    image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(25)])
    back = processor.denormalise(processor([image]))[0] * 255
    want = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
    torch.testing.assert_close(back, want, atol=1e-3, rtol=0)
