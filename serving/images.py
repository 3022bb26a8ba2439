"""Image decoding for the server: only the declared, advertised formats, and a bound on the
pixels a body may decode to, checked from the header before any pixel memory is allocated.

A 120 KB PNG can declare 6000×6000 pixels (~100 MB decoded, ~500 MB while Pillow converts
it): the bound is ``pixels <= max(free_pixels, pixels_per_byte * body bytes)`` and never more
than ``max_pixels``. Concurrent decodes are bounded by the server (a semaphore).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

#: Declared content type → the one Pillow format decoded for it.
FORMATS: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
}


@dataclass(frozen=True)
class DecodeLimits:
    """How large a decoded image may be.

    Attributes:
        max_pixels: largest image in any case (pixels).
        free_pixels: images up to this size decode whatever their compression.
        pixels_per_byte: above ``free_pixels``, at most this many pixels per body byte (a
            photo's JPEG has 2-10; a 6000×6000 flat PNG of 120 KB has 300).
    """

    max_pixels: int = 24_000_000
    free_pixels: int = 4_000_000
    pixels_per_byte: float = 64.0

    def allowed(self, body_bytes: int) -> int:
        """Largest pixel count a body of ``body_bytes`` may decode to."""
        by_size = int(self.pixels_per_byte * body_bytes)
        return min(self.max_pixels, max(self.free_pixels, by_size))


class ImageRefused(ValueError):
    """A body cannot be decoded: ``status`` (400, 413 or 415), ``reason`` (a metric label) and a
    message saying why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def decode(data: bytes, content_type: str, limits: DecodeLimits) -> np.ndarray:
    """Decode ``data`` as the declared ``content_type`` to ``uint8 (H, W, 3)`` RGB pixels.

    Raises :class:`ImageRefused`: 415 for a body that is not the declared format, 413 for an
    image over the pixel bound (found from the header, before decoding), 400 for a corrupt
    one.
    """
    from PIL import Image, UnidentifiedImageError

    fmt = FORMATS.get(content_type)
    if fmt is None:
        raise ImageRefused(415, "content_type", f"content type {content_type!r} is not decoded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = im.size
            allowed = limits.allowed(len(data))
            if w * h > allowed:
                raise ImageRefused(
                    413, "pixels",
                    f"image is {w}x{h} = {w * h} pixels from a {len(data)}-byte body; at most "
                    f"{allowed} pixels are decoded for a body of this size",
                )  # fmt: skip
            im.load()
            rgb: Image.Image = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ImageRefused(
            415, "format", f"body is not a {fmt} image (the declared {content_type})"
        ) from None
    except Exception as e:  # Pillow raises many types for bad data
        raise ImageRefused(400, "corrupt", f"undecodable image: {type(e).__name__}: {e}") from None
