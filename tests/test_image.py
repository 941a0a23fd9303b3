"""Image loading and preprocessing: modes, broken files, and the three resize policies."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from ovis.errors import ConfigError
from ovis.interfaces import ImageError, ImagePreprocessSpec, ImageProcessor, load_image
from ovis.interfaces.image import MAX_PIXELS_ENV, ImageTooLargeError


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


# -- the pixel limit (decompression bombs) -------------------------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 8-bit grey pixels but holds none: a bomb's
    header, a few dozen bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def default_limit(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test


def test_a_bomb_over_pillows_error_threshold_is_an_image_error(tmp_path, default_limit):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(20000, 20000))
    with pytest.raises(ImageTooLargeError, match=r"bomb.png: image is too large.*400000000 pixels.*"
                                                 r"the limit is 89,478,485 pixels.*OVIS_MAX_IMAGE_PIXELS"):
        load_image(path)


def test_an_image_over_the_limit_is_refused_from_its_header(tmp_path, default_limit):
    path = tmp_path / "big.png"
    path.write_bytes(_png_claiming(10000, 10000))  # past ovis's limit, under Pillow's error threshold
    with pytest.raises(ImageTooLargeError, match=r"big.png: image is 10000x10000 = 100,000,000 pixels; "
                                                 r"the limit is 89,478,485 .*raise it with OVIS_MAX_IMAGE_PIXELS"):
        load_image(path)


def test_the_limit_is_set_by_the_environment_or_the_caller(tmp_path, monkeypatch, default_limit):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20), "red").save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    with pytest.raises(ImageTooLargeError, match=r"small.png: image is 20x20 = 400 pixels; the limit is 100 "):
        load_image(path)
    with pytest.raises(ImageTooLargeError, match="the limit is 100 "):
        load_image(Image.new("RGB", (20, 20)), what="an opened image")  # opened images too
    assert load_image(path, max_pixels=400).size == (20, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="OVIS_MAX_IMAGE_PIXELS='lots': expected a positive whole number"):
        load_image(path)


def test_a_limit_above_pillows_raises_pillows_threshold(tmp_path, monkeypatch, default_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "wide.png"
    Image.new("L", (100, 30), 9).save(path)  # 3,000 pixels: twice Pillow's threshold, an error there
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    assert load_image(path).getpixel((0, 0)) == (9, 9, 9)
    assert Image.MAX_IMAGE_PIXELS == 5000


def test_a_bomb_in_a_training_dataset_is_skipped_and_counted(tmp_path, toy_processor, default_limit):
    from torch.utils.data import DataLoader

    from ovis.data import DataCollator, build_dataset
    from ovis.data.skips import SkipLog

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), "green").save(images / name)
    (images / "bomb.png").write_bytes(_png_claiming(20000, 20000))
    (tmp_path / "caps.json").write_text(json.dumps(
        [{"image_path": name, "caption": "green."} for name in ("a.png", "bomb.png", "b.png")]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"caps": {"meta_file": "caps.json", "image_dir": "images", "data_format": "caption"}}))
    skips = SkipLog()
    dataset = build_dataset(tmp_path / "dataset_info.json", ["caps"], toy_processor, skip_log=skips)
    batches = list(DataLoader(dataset, batch_size=3, collate_fn=DataCollator(toy_processor)))
    assert len(batches) == 1 and batches[0]["num_skipped"] == 1 and batches[0]["input_ids"].shape[0] == 2
    assert skips.count == 1 and "bomb.png: image is too large to decode safely" in skips.reasons()["caps[1]"]


def test_a_bomb_is_a_clear_error_for_the_runner_and_ovis_run(tmp_path, chatty_runner, chatty_model_dir,
                                                              default_limit, capsys):
    from ovis.cli import main

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(10000, 10000))
    with pytest.raises(ImageTooLargeError, match=r"bomb.png\)?: image is 10000x10000 = 100,000,000 pixels"):
        chatty_runner.run(bomb, "What is this?")
    assert main(["run", "--model", str(chatty_model_dir), "--image", str(bomb), "hi"]) == 2
    err = capsys.readouterr().err
    assert "image is 10000x10000 = 100,000,000 pixels" in err and "bomb.png" in err and "Traceback" not in err
