"""Encoded image bytes -> an ``image_size`` x ``image_size`` 8-bit RGB centre crop, or a rejection.

Every odd input either becomes plain RGB or raises ``RejectedInput`` with a short stable
reason ``"<category>: <detail>"`` (categories in ``REJECT_CATEGORIES``):

- zero bytes -> ``empty``; bytes Pillow cannot identify (random data, text) -> ``not an image``;
  an identified file whose pixels fail to decode -> ``truncated`` or ``corrupt``. Truncated
  files are never half-loaded: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off.
- ``w * h > max_pixels`` -> ``too large``, decided from the header before any pixel is
  decoded; Pillow's own ``DecompressionBombError`` (raised past 2x ``Image.MAX_IMAGE_PIXELS``)
  is caught and reported the same way.
- short side < ``min_side`` -> ``too small``.
- the format is found from the content, never the file name (a PNG named .jpg is fine).
- animated GIF/WebP/APNG: frame 0. EXIF orientation is applied (``ImageOps.exif_transpose``)
  and recorded. CMYK/YCbCr/LAB/HSV/L/1-bit are converted; palette, LA and RGBA images are
  composited onto white; 16-bit ("I;16*", "I") and float ("F") images are scaled to 8 bits
  by their actual value range, not clipped at 255.

The resize makes the short side ``image_size`` with Lanczos filtering (``reducing_gap`` for
fast, alias-free large reductions), then centre-crops the square.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

REJECT_CATEGORIES = (
    "empty",
    "not an image",
    "truncated",
    "corrupt",
    "too large",
    "too small",
    "unsupported",
    # raised by the sources before decoding (sources.py)
    "unreadable",
    "no image in sample",
    "truncated shard",
    "corrupt shard",
)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GRAY_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_REDUCING_GAP = 3.0  # Pillow: reduce by an integer factor first, then Lanczos the rest


class RejectedInput(Exception):
    """An input that cannot become a training image; ``reason`` is ``"<category>: <detail>"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def category(self) -> str:
        return reason_category(self.reason)


def reason_category(reason: str) -> str:
    """``"too small: 4x4 < 16"`` -> ``"too small"`` (the part before the first colon)."""
    return reason.split(":", 1)[0].strip()


@dataclass(frozen=True)
class NormalizedImage:
    """A decoded input as stored in the shards, plus what is known about the original.

    ``original_size`` is (w, h) as displayed, i.e. after the EXIF orientation was applied.
    """

    image: Image.Image  # mode "RGB", (image_size, image_size)
    original_size: tuple[int, int]
    original_mode: str
    original_format: str | None
    exif_transposed: bool
    num_frames: int

    def png_bytes(self) -> bytes:
        """Lossless PNG, also for photos: the simplest format that adds no second lossy step."""
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()


def normalize_image(
    data: bytes, *, image_size: int, min_side: int, max_pixels: int
) -> NormalizedImage:
    """Decode ``data`` by content and return the normalised crop; raise ``RejectedInput``."""
    if not data:
        raise RejectedInput("empty: zero-byte file")
    im = _open(data, max_pixels=max_pixels)
    width, height = im.size
    if width * height > max_pixels:
        raise RejectedInput(f"too large: {width}x{height} > {max_pixels} pixels")
    if min(width, height) < min_side:
        raise RejectedInput(f"too small: {width}x{height} < {min_side}")
    num_frames = int(getattr(im, "n_frames", 1) or 1)
    original_mode, original_format = im.mode, im.format
    _load(im)
    im, transposed = _apply_exif_orientation(im)
    rgb = to_rgb(im)
    return NormalizedImage(
        image=resize_center_crop(rgb, image_size),
        original_size=im.size,
        original_mode=original_mode,
        original_format=original_format,
        exif_transposed=transposed,
        num_frames=num_frames,
    )


# The formats ingest decodes, named so the answer for a given input never depends on which
# Pillow plugins some other library registered in this process (a Ray worker and the
# driver must reject the same bytes for the same reason). Formats without a magic number
# (TGA, ...) are left out: they "identify" random bytes and fail later as corrupt.
INGEST_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "JPEG2000", "AVIF", "QOI", "ICO", "PSD")


def _pillow_open():
    """Pillow's own ``Image.open``. ultralytics replaces it process-wide
    (``ultralytics/utils/patches.py``) with a wrapper that, on a file Pillow cannot identify,
    tries to pip-install pi-heif (offline: ModuleNotFoundError), so a process that imported
    ultralytics would reject a non-image as "corrupt" and try an install during ingest."""
    opener = Image.open
    if getattr(opener, "__module__", "") != Image.__name__:
        opener = opener.__globals__.get("_image_open", opener)  # the original the patch wraps
    return opener


def _open(data: bytes, *, max_pixels: int) -> Image.Image:
    """Read the header only (Pillow opens lazily); map every failure to a reason."""
    try:
        with warnings.catch_warnings():
            # our own max_pixels is the policy; Pillow's warning threshold is not
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _pillow_open()(io.BytesIO(data), formats=INGEST_FORMATS)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            return im
    except Image.DecompressionBombError as err:
        raise RejectedInput(f"too large: {err}") from None
    except UnidentifiedImageError:
        raise RejectedInput("not an image: cannot identify image file") from None
    except Exception as err:  # noqa: BLE001 - any plugin error is this input's problem
        raise RejectedInput(_decode_reason(err)) from None


def _load(im: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as err:
        raise RejectedInput(f"too large: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise RejectedInput(_decode_reason(err)) from None


def _decode_reason(err: Exception) -> str:
    message = str(err) or type(err).__name__
    if isinstance(err, EOFError) or "truncated" in message.lower():
        return f"truncated: {message}"
    return f"corrupt: {type(err).__name__}: {message}"


def _apply_exif_orientation(im: Image.Image) -> tuple[Image.Image, bool]:
    """Rotate/flip as the EXIF Orientation tag says; a broken EXIF block is ignored."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the pixels as stored
        return im, False
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return im, False
    return ImageOps.exif_transpose(im), True


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (alpha composited onto white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _WIDE_GRAY_MODES:
        return Image.fromarray(_scale_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as err:
        raise RejectedInput(f"unsupported: mode {mode}: {err}") from None


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Wide grayscale -> uint8 by the image's own finite min..max range."""
    arr = values.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.where(finite, arr, lo)
    if hi > lo:
        return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    # constant image: place the value on its nominal full scale
    full_scale = 65535.0 if mode.startswith("I;16") else (1.0 if mode == "F" and hi <= 1 else 255.0)
    level = np.clip(round(lo / full_scale * 255.0), 0, 255)
    return np.full(arr.shape, level, np.uint8)


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Short side -> ``size`` (Lanczos), then the central ``size`` x ``size`` square."""
    width, height = im.size
    scale = size / min(width, height)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        gap = _REDUCING_GAP if scale < 1 else None
        im = im.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=gap)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return im.crop((left, top, left + size, top + size))
