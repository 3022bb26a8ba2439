"""A tiny served pool for the serving tests (see :func:`build_tiny_pool`) and test images."""

from __future__ import annotations

from modi.experiments.bench_serving import build_tiny_pool

__all__ = ["TOKEN", "build_tiny_pool", "png"]

TOKEN = "test-token"


def png(size: int = 64, mode: str = "L", fmt: str = "PNG") -> bytes:
    """An encoded image of ``size`` x ``size`` pixels."""
    import io

    from PIL import Image

    im = Image.new(mode, (size, size), 128)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()
