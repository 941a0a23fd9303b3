"""Image preprocessing driven by an ``ImagePreprocessSpec``.

Lives with the interfaces because every vision backbone exposes one, and because training,
serving and evaluation must all turn images into pixels the same way.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ovis.errors import ConfigError, OvisError
from ovis.interfaces.specs import ImagePreprocessSpec

logger = logging.getLogger("ovis.image")

#: what every image-taking API accepts: a path, or an image already opened
ImageInput = str | Path | Image.Image

#: the environment variable that sets the pixel limit of :func:`load_image`
MAX_PIXELS_ENV = "OVIS_MAX_IMAGE_PIXELS"
#: the default pixel limit (width x height): Pillow's own decompression-bomb threshold, ~89.5 Mpx
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

#: modes whose transparent pixels are composited on white (:data:`BACKGROUND`)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: what transparent pixels become: white, as a page or a web page behind them would be
BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION = 0x0112  # the EXIF orientation tag

#: the file formats :func:`load_image` opens: raster formats Pillow decodes by itself. Left out on
#: purpose: EPS (Pillow hands it to Ghostscript, an interpreter, to render) and formats that need
#: other outside programs or are rarely pictures (PDF, WMF/EMF, FITS, MIC...).
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "DIB", "TIFF", "WEBP", "ICO", "TGA", "PPM",
                 "JPEG2000", "PCX", "SGI", "QOI", "DDS", "ICNS", "AVIF", "HEIF")


class ImageError(OvisError, ValueError):
    """An image that cannot be used: missing, unreadable, truncated or of an unsupported mode."""


class ImageTooLargeError(ImageError):
    """An image with more pixels than the limit (a decompression bomb, or just too large).

    ``size`` is its ``(width, height)`` when known (None when Pillow refused it first), ``limit`` the
    limit it broke."""

    def __init__(self, message: str, *, size: tuple[int, int] | None, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


def max_image_pixels() -> int:
    """The pixel limit in force: ``$OVIS_MAX_IMAGE_PIXELS`` if set, else :data:`DEFAULT_MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive whole number of pixels (width x height)")
    return value


def _too_large(label: str, width: int, height: int, limit: int, how: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{label}: image is {width}x{height} = {width * height:,} pixels; the limit is {limit:,} "
        f"(a guard against decompression bombs; {how})",
        size=(width, height), limit=limit,
    )


def load_image(
    source: ImageInput | bytes, *, what: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open an image fully (so truncation is caught here, not later) and convert it to RGB.

    ``what`` names the image in error messages (a file path, a dataset row...). ``source`` may also
    be the encoded bytes of an image.

    The one image loader of ovis (training, ``ovis run``, ``OvisRunner``, serving, evaluation):

    - **Pixel limit**: an image of more than ``max_pixels`` pixels (default: ``$OVIS_MAX_IMAGE_PIXELS``,
      else :data:`DEFAULT_MAX_IMAGE_PIXELS`) raises :class:`ImageTooLargeError`, checked from the header
      before anything is decoded, so a decompression bomb costs nothing. A limit above Pillow's own
      bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``) raises that threshold to match (process-wide).
    - **EXIF orientation** is applied (a photo taken sideways comes out upright).
    - **Modes**: RGB as is; 1, L, P, CMYK, YCbCr and the rest by Pillow's conversion; transparent
      pixels (RGBA, LA, PA, P with transparency) composited on white (:data:`BACKGROUND`);
      16-bit (``I;16``, ``I;16B``...) scaled from 0-65535 to 0-255 (divided by 257); 32-bit ``I``
      read as 16-bit when its values lie in 0-65535 (how Pillow opens 16-bit PNG and TIFF files),
      else stretched from its own min-max to 0-255; float ``F`` read as 0-1 when its values lie there,
      else stretched from its own min-max. A constant image outside those ranges is clipped.
    """
    label = what or (str(source) if isinstance(source, (str, Path)) else "image")
    limit = max_image_pixels() if max_pixels is None else max_pixels
    how = f"raise it with {MAX_PIXELS_ENV}" if max_pixels is None else "the caller's max_pixels"
    if isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source, label, limit, how)
    width, height = image.size  # from the header: nothing decoded yet
    if width * height > limit:
        raise _too_large(label, width, height, limit, how)
    try:
        image.load()
    except (OSError, SyntaxError) as exc:
        raise ImageError(f"{label}: image data is truncated or corrupt ({exc})") from exc
    image = _upright(image, label)
    try:
        return _to_rgb(image, label)
    except (ValueError, OSError) as exc:
        raise ImageError(f"{label}: cannot convert mode {image.mode!r} to RGB ({exc})") from exc


def _open(source: str | Path | bytes, label: str, limit: int, how: str) -> Image.Image:
    if isinstance(source, bytes):
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if stream.is_dir():
            raise ImageError(f"{label} is a directory, not an image file")
        if not stream.is_file():
            raise ImageError(f"{label}: image file not found")
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # ovis checks its own limit; Pillow's must not be lower
    try:
        return Image.open(stream, formats=accepted_image_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # a warning if made an error
        raise ImageTooLargeError(f"{label}: image is too large to decode safely ({exc}); the limit is "
                                 f"{limit:,} pixels ({how})", size=None, limit=limit) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{label}: not a readable image in an accepted format ({exc}); accepted: "
                         f"{', '.join(accepted_image_formats())}") from exc


def accepted_image_formats() -> tuple[str, ...]:
    """:data:`IMAGE_FORMATS` this Pillow can open (AVIF/HEIF only with their plugins installed)."""
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


def _upright(image: Image.Image, label: str) -> Image.Image:
    """``image`` turned as its EXIF orientation says (unchanged when it has none)."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        logger.warning("%s: its EXIF orientation could not be read (%s); the image is used as stored", label, exc)
    return image


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _scale_to_8_bit(image).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        return image.convert("RGB")
    raise ImageError(f"{label}: unsupported image mode {mode!r}; expected RGB or one Pillow converts to RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """A high-bit-depth (16-bit, 32-bit integer or float) image as 8-bit ``L``, scaled (see load_image)."""
    sixteen_bit = image.mode in _SIXTEEN_BIT_MODES
    floats = image.convert("F")  # exact for 16-bit; 32-bit integers keep 24 bits, far beyond 8
    low, high = floats.getextrema()
    if sixteen_bit or (image.mode == "I" and low >= 0 and high <= 65535):
        scale, offset = 1 / 257, 0.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scale, offset = 255.0, 0.0
    elif high > low:
        scale, offset = 255 / (high - low), -low * 255 / (high - low)
    else:
        scale, offset = 1.0, 0.0  # constant: its value, clipped to 0-255
    # F -> L truncates and clips: + 0.5 makes it round.
    return floats.point(lambda v: v * scale + offset + 0.5).convert("L")


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

    def denormalise(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The inverse of the normalisation: ``[..., 3, H, W]`` as given back to RGB in 0..1 (the
        padding of ``pad`` comes back as the mean colour)."""
        return pixel_values.float() * self._std + self._mean

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
