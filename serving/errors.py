"""Errors of the serving module and how their messages are made safe to send to a client."""

from __future__ import annotations

import os
import re
from typing import Any

#: Longest client value echoed back in an error message (characters).
MAX_ECHO = 60
#: Longest error message sent to a client (characters).
MAX_MESSAGE = 400
_ADDRESS = re.compile(r"\s*at 0x[0-9a-fA-F]+")
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"(),;]+/)+([^\s/:'\"(),;]+)")


class ServerConfigError(ValueError):
    """The server cannot start with this configuration; the message says what to fix."""


class HTTPProblem(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the problem (made
    safe with :func:`clean`); ``headers`` go into the response."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        message = clean(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def show(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr`` of a client value, cut to ``limit`` characters (the rest summarised)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: limit + 1]).decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def clean(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message fit for a client: no heap addresses (``<... at 0x7f..>``), absolute paths cut
    to their file names, at most ``limit`` characters."""
    text = _ADDRESS.sub("", str(message))
    text = hide_paths(text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def hide_paths(text: str) -> str:
    """Replace absolute file paths in ``text`` by their last component."""
    return _ABS_PATH.sub(lambda m: m.group(1), text)


def file_label(path: str | os.PathLike[str]) -> str:
    """What a client may see of a file: its name only."""
    return os.path.basename(os.fspath(path)) or os.fspath(path)
