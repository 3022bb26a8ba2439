"""Image decoding and preprocessing shared by the reference server, the client emulator and the
profiler: one implementation, so device-side and server-side preprocessing give the same tensor.

Pixels travel as ``uint8`` arrays ``(H, W, 3)`` (RGB). :func:`to_model_input` turns them into
a model's ``(1, C, H, W)`` float32 input as its :class:`~modi.experiments.zoo.ZooEntry` says:
area-resize to the input size, gray or RGB, ``value / 255 * scale``, then ``(v - mean) / std``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np

#: Content type of a device-preprocessed body: raw ``uint8`` RGB pixels, shape given separately.
PIXELS_CONTENT_TYPE = "application/x-modi-pixels"
#: Encoded image types the server decodes itself.
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")
#: Largest decoded image (pixels) accepted: larger ones are refused before decoding.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """A body cannot be turned into pixels; the message says why."""


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP bytes to ``uint8 (H, W, 3)`` RGB; :class:`ImageError` if not."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"image is {w}x{h} pixels, over the {max_pixels} pixel limit")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ImageError:
        raise
    except Exception as e:  # PIL raises many types for bad data
        raise ImageError(f"undecodable image: {type(e).__name__}: {e}") from None


def encode_image(pixels: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode ``uint8 (H, W, 3)`` pixels as JPEG or PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt.upper() == "JPEG" else {}
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``uint8 (H, W, 3)`` pixels (area filter when shrinking, bilinear when growing)."""
    from PIL import Image

    if pixels.shape[:2] == (height, width):
        return pixels
    im = Image.fromarray(pixels)
    shrink = width < pixels.shape[1] and height < pixels.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(im.resize((width, height), method), dtype=np.uint8)


def parse_pixels(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """Raw ``uint8`` RGB pixels of ``shape`` ``(H, W, 3)``; :class:`ImageError` if they don't
    fit."""
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ImageError(f"pixel shape must be HxWx3 with positive sizes, got {tuple(shape)}")
    h, w, c = (int(s) for s in shape)
    if h * w > MAX_PIXELS:
        raise ImageError(f"pixel shape {h}x{w} is over the {MAX_PIXELS} pixel limit")
    if len(data) != h * w * c:
        raise ImageError(f"body has {len(data)} bytes, shape {h}x{w}x{c} needs {h * w * c}")
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)


def to_model_input(
    pixels: np.ndarray,
    input_chw: Sequence[int],
    color: str,
    scale: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """A model's ``(1, C, H, W)`` float32 input from ``uint8 (H, W, 3)`` RGB pixels."""
    c, h, w = (int(v) for v in input_chw)
    x: np.ndarray = resize(pixels, h, w).astype(np.float32) * np.float32(scale / 255.0)
    if color == "gray":
        x = x.mean(axis=2, keepdims=True, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    out: np.ndarray = ((x - m) / s).astype(np.float32, copy=False)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None, :c])
