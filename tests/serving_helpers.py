"""A tiny served pool for the serving tests (see :func:`build_tiny_pool`) and test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modi.experiments.bench_serving import build_tiny_pool
from modi.serving import ServeConfig

__all__ = ["TOKEN", "build_tiny_pool", "infer", "png", "serve_config", "with_props"]

TOKEN = "test-token"


def png(size: int = 64, mode: str = "L", fmt: str = "PNG") -> bytes:
    """An encoded image of ``size`` x ``size`` pixels."""
    import io

    from PIL import Image

    im = Image.new(mode, (size, size), 128)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def with_props(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of the selector ``src`` with ``modi.<key>`` metadata set (added when absent)."""
    import onnx

    model = onnx.load(str(src))
    todo = {f"modi.{k}": v for k, v in changes.items()}
    for p in model.metadata_props:
        if p.key in todo:
            p.value = todo.pop(p.key)
    for k, v in todo.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(dst))
    return dst


def serve_config(tiny: dict[str, Path], sel: str = "a.onnx", **kw: Any) -> ServeConfig:
    """A server config over the tiny pool with the selector file ``sel`` of its folder."""
    base: dict[str, Any] = {"pool_dir": tiny["dir"], "pool_yaml": tiny["yaml"],
                            "selector": tiny["sel"] / sel, "admin_token": TOKEN}  # fmt: skip
    base.update(kw)
    return ServeConfig(**base)


def infer(c: Any, headers: dict[str, str] | None = None, **params: Any) -> Any:
    """POST one PNG to ``/v1/infer`` with a default request's fields, ``params`` overriding."""
    q = {"sla_ms": 200, "upload_ms": 5.0, "elapsed_ms": 10.0, "client_id": "p1", **params}
    return c.post("/v1/infer", params=q, content=png(),
                  headers={"content-type": "image/png", **(headers or {})})  # fmt: skip
