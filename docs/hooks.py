"""MkDocs hook: tables generated from the code at build time, so the pages cannot drift.

In a page, ``{{ feature_table("modi.runtime.features.REQUEST_FEATURES") }}`` becomes a Markdown
table of that ``(name, unit, description)`` schema (column index, name, unit, meaning), and
``{{ value("modi.runtime.features.SCHEMA_VERSION") }}`` the constant's value. A name that does not
exist (or is not such a schema) fails the build with the page and the name in the message.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from mkdocs.exceptions import PluginError

_CALL = re.compile(r"\{\{\s*(feature_table|value)\(\s*\"([\w.]+)\"\s*\)\s*\}\}")


def _resolve(dotted: str, page: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"{page}: cannot import {module_name!r} for {dotted!r}: {e}") from e
    if not hasattr(module, attr):
        raise PluginError(f"{page}: {module_name} has no attribute {attr!r} ({dotted!r})")
    return getattr(module, attr)


def feature_table(schema: Any, dotted: str, page: str) -> str:
    """A Markdown table of a ``(name, unit, description)`` feature schema."""
    ok = isinstance(schema, tuple) and all(
        isinstance(row, tuple) and len(row) == 3 and all(isinstance(x, str) for x in row)
        for row in schema
    )
    if not ok or not schema:
        raise PluginError(f"{page}: {dotted} is not a (name, unit, description) feature schema")
    lines = ["| column | name | unit | meaning |", "|---:|---|---|---|"]
    for i, (name, unit, desc) in enumerate(schema):
        cell = desc.replace("|", r"\|")
        lines.append(f"| {i} | `{name}` | {unit} | {cell} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace the ``{{ ... }}`` calls of one page."""
    where = page.file.src_uri

    def sub(m: re.Match[str]) -> str:
        kind, dotted = m.group(1), m.group(2)
        obj = _resolve(dotted, where)
        if kind == "feature_table":
            return feature_table(obj, dotted, where)
        return f"`{obj}`"

    return _CALL.sub(sub, markdown)
