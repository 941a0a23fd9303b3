"""Image preprocessing driven by an ``ImagePreprocessSpec``.

Lives with the interfaces because every vision backbone exposes one, and because training,
serving and evaluation must all turn images into pixels the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ovis.errors import OvisError
from ovis.interfaces.specs import ImagePreprocessSpec

#: what every image-taking API accepts: a path, or an image already opened
ImageInput = str | Path | Image.Image


class ImageError(OvisError, ValueError):
    """An image that cannot be used: missing, unreadable, truncated or of an unsupported mode."""


def load_image(source: ImageInput, *, what: str | None = None) -> Image.Image:
    """Open an image fully (so truncation is caught here, not later) and convert it to RGB.

    ``what`` names the image in error messages (a file path, a dataset row...).
    """
    label = what or (str(source) if not isinstance(source, Image.Image) else "image")
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: image file not found")
        try:
            image = Image.open(path)
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"{label}: not a readable image ({exc})") from exc
    try:
        image.load()
    except (OSError, SyntaxError) as exc:
        raise ImageError(f"{label}: image data is truncated or corrupt ({exc})") from exc
    if image.mode in ("RGB",):
        return image
    if image.mode in ("L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "1", "LAB", "HSV"):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Composite on white rather than letting transparent pixels turn black.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        try:
            return image.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageError(f"{label}: cannot convert mode {image.mode!r} to RGB ({exc})") from exc
    raise ImageError(f"{label}: unsupported image mode {image.mode!r}; expected RGB or convertible")


def pad_resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` to resize to before padding: the long side becomes ``size`` and the short
    side ``int(short / long * size)``, rounded down, exactly as Ovis v1 computed it."""
    if width == height:
        return size, size
    if width > height:
        return size, max(1, int(height / width * size))
    return max(1, int(width / height * size)), size


class ImageProcessor:
    """Turns PIL images into normalised ``[B, 3, S, S]`` float tensors for one encoder."""

    def __init__(self, spec: ImagePreprocessSpec) -> None:
        self.spec = spec
        self._mean = torch.tensor(spec.mean).view(3, 1, 1)
        self._std = torch.tensor(spec.std).view(3, 1, 1)
        self._resample = {
            "bicubic": Image.Resampling.BICUBIC,
            "bilinear": Image.Resampling.BILINEAR,
        }[spec.interpolation]

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return data.view(image.height, image.width, 3).permute(2, 0, 1).float().div_(255.0)

    def preprocess_one(self, image: ImageInput) -> torch.Tensor:
        image = load_image(image)
        size = self.spec.image_size
        width, height = image.size
        if self.spec.resize == "squash":
            image = image.resize((size, size), self._resample)
        elif self.spec.resize == "crop":
            scale = size / min(width, height)
            new = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = image.resize(new, self._resample)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:  # pad
            image = image.resize(pad_resize_shape(width, height, size), self._resample)
        pixels = (self._to_tensor(image) - self._mean) / self._std
        if self.spec.resize == "pad":
            # Pad after normalisation, so the border is exactly 0 in normalised space (v1 behaviour).
            h, w = pixels.shape[1:]
            top, left = (size - h) // 2, (size - w) // 2
            pixels = F.pad(pixels, (left, size - w - left, top, size - h - top), value=0.0)
        return pixels

    def __call__(self, images: Sequence[ImageInput]) -> torch.Tensor:
        if not images:
            size = self.spec.image_size
            return torch.zeros(0, 3, size, size)
        return torch.stack([self.preprocess_one(image) for image in images])

    def to_dict(self) -> dict:
        return {"processor_class": "OvisImageProcessor", **self.spec.model_dump(mode="json")}
