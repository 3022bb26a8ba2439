"""Images captured on the device: resolution, raw encoded size and preprocessed payload size.

A request starts with an image of ``R`` megapixels whose encoded (JPEG) size is ``S_raw`` bytes.
Preprocessing (PieSlicer's step 2 or 4) decodes it, resizes it to the model input (224x224) and
re-encodes it: the payload the device uploads after on-device preprocessing is ``S_pre`` bytes,
much smaller than ``S_raw`` for a camera photo.

Two ways to draw images (``mode``):

* ``"camera"`` — what a phone's users send: a fraction ``camera_fraction`` of the requests are
  fresh full-resolution photos of the device's camera (``camera_mp`` megapixels, a per-tier
  fact: Nexus 5 8 MP, Moto X4 12 MP, Pixel 2 12.2 MP); the rest (gallery pictures, downloads,
  screenshots, crops) have a resolution uniform in ``other_mp``.
* ``"file_size"`` — PieSlicer's *image-1k* data set: encoded sizes uniform in ``file_size_mb``
  (0–10 MB in 100 KB buckets of 10 images each, ``cake-lab/PieSlicer`` ``datasets/README.md``),
  the resolution following from the size.

Sizes and resolution are tied by the JPEG density ``bytes_per_pixel`` (log-normal per image,
median ``bytes_per_pixel``, log-space standard deviation ``bytes_per_pixel_sigma``). Assumption,
not a measurement in ``shared/data``: phone and Flickr photos at JPEG quality ~90 take about
0.25–0.45 bytes per pixel (a 12 MP photo is 3–5 MB), so the median is 0.35 with sigma 0.3.
The preprocessed payload is a 224x224 JPEG: median ``preprocessed_kb`` (20 KB), log-space
sigma ``preprocessed_sigma`` (0.2; content-dependent), never larger than the raw image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]

#: Megapixels of a 224x224 model input (a preprocessed image).
INPUT_MEGAPIXELS = 224 * 224 / 1e6

ImageMode = Literal["camera", "file_size"]


class ImageError(ValueError):
    """An image distribution or an image is malformed; the message names the field."""


def _positive(value: object, field: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool):
        raise ImageError(f"{field} must be a number, got {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImageError(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ImageError(f"{field} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return x


def _range(value: Sequence[float], field: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ImageError(f"{field} must be [low, high], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not 0 < lo <= hi:
        raise ImageError(f"{field} must satisfy 0 < low <= high, got {list(value)!r}")
    return lo, hi


@dataclass(frozen=True)
class ImageBatch:
    """Images of a block of requests, arrays of one shape.

    Every value must be finite and > 0: a negative or zero resolution or size raises an
    :class:`ImageError` naming the field.
    """

    megapixels: F64
    raw_bytes: F64
    pre_bytes: F64

    def __post_init__(self) -> None:
        for field in ("megapixels", "raw_bytes", "pre_bytes"):
            arr = np.asarray(getattr(self, field), dtype=np.float64)
            object.__setattr__(self, field, arr)
            bad = ~np.isfinite(arr) | (arr <= 0)
            if bad.any():
                raise ImageError(
                    f"images.{field} must be finite and > 0, got {arr[bad].ravel()[:3].tolist()}"
                )
        shapes = {a.shape for a in (self.megapixels, self.raw_bytes, self.pre_bytes)}
        if len(shapes) != 1:
            raise ImageError(f"image arrays must share one shape, got {sorted(shapes)}")

    @classmethod
    def from_values(
        cls, megapixels: ArrayLike, raw_bytes: ArrayLike, pre_bytes: ArrayLike
    ) -> ImageBatch:
        """Validated images from explicit values (broadcast to one shape)."""
        mp, raw, pre = np.broadcast_arrays(
            np.asarray(megapixels, dtype=np.float64),
            np.asarray(raw_bytes, dtype=np.float64),
            np.asarray(pre_bytes, dtype=np.float64),
        )
        return cls(mp.copy(), raw.copy(), pre.copy())


class ImageModel:
    """A distribution of captured images (see the module docstring).

    Args:
        mode: ``"camera"`` or ``"file_size"``.
        camera_mp: resolution of the device's camera (megapixels), ``camera`` mode.
        camera_fraction: share of full-resolution camera photos, in [0, 1].
        other_mp: ``[low, high]`` megapixels of the other images (uniform), ``camera`` mode.
        file_size_mb: ``[low, high]`` encoded size in MB (uniform), ``file_size`` mode.
        bytes_per_pixel: median JPEG density of raw images (bytes per pixel).
        bytes_per_pixel_sigma: log-space standard deviation of the density, >= 0.
        preprocessed_kb: median size of the preprocessed 224x224 payload (KB, 1000 bytes).
        preprocessed_sigma: log-space standard deviation of that size, >= 0.
    """

    def __init__(
        self,
        mode: str = "camera",
        camera_mp: float = 12.0,
        camera_fraction: float = 0.5,
        other_mp: Sequence[float] = (0.1, 12.0),
        file_size_mb: Sequence[float] = (0.01, 10.0),
        bytes_per_pixel: float = 0.35,
        bytes_per_pixel_sigma: float = 0.3,
        preprocessed_kb: float = 20.0,
        preprocessed_sigma: float = 0.2,
    ) -> None:
        if mode not in ("camera", "file_size"):
            raise ImageError(f"images.mode must be 'camera' or 'file_size', got {mode!r}")
        self.mode: ImageMode = mode  # type: ignore[assignment]
        self.camera_mp = _positive(camera_mp, "images.camera_mp")
        frac = _positive(camera_fraction, "images.camera_fraction", allow_zero=True)
        if frac > 1:
            raise ImageError(f"images.camera_fraction must be in [0, 1], got {camera_fraction!r}")
        self.camera_fraction = frac
        self.other_mp = _range(other_mp, "images.other_mp")
        self.file_size_mb = _range(file_size_mb, "images.file_size_mb")
        self.bytes_per_pixel = _positive(bytes_per_pixel, "images.bytes_per_pixel")
        self.bytes_per_pixel_sigma = _positive(
            bytes_per_pixel_sigma, "images.bytes_per_pixel_sigma", allow_zero=True
        )
        self.preprocessed_kb = _positive(preprocessed_kb, "images.preprocessed_kb")
        self.preprocessed_sigma = _positive(
            preprocessed_sigma, "images.preprocessed_sigma", allow_zero=True
        )

    def __repr__(self) -> str:
        if self.mode == "camera":
            what = (
                f"camera_mp={self.camera_mp}, camera_fraction={self.camera_fraction}, "
                f"other_mp={list(self.other_mp)}"
            )
        else:
            what = f"file_size_mb={list(self.file_size_mb)}"
        return f"ImageModel(mode={self.mode!r}, {what}, bytes_per_pixel={self.bytes_per_pixel})"

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> ImageBatch:
        """Draw images for a block of requests of the given shape."""
        density = self.bytes_per_pixel * np.exp(
            self.bytes_per_pixel_sigma * rng.standard_normal(shape)
        )
        if self.mode == "camera":
            other = rng.uniform(self.other_mp[0], self.other_mp[1], size=shape)
            is_camera = rng.random(shape) < self.camera_fraction
            mp = np.where(is_camera, self.camera_mp, other)
            raw = mp * 1e6 * density
        else:
            raw = rng.uniform(self.file_size_mb[0], self.file_size_mb[1], size=shape) * 1e6
            mp = raw / density / 1e6
        pre = (
            self.preprocessed_kb
            * 1e3
            * np.exp(self.preprocessed_sigma * rng.standard_normal(shape))
        )
        return ImageBatch(mp, raw, np.minimum(pre, raw))
