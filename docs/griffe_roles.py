"""Griffe extension: the Sphinx roles of the project's docstrings as Markdown code.

The docstrings use reStructuredText roles (``:class:`~modi.runtime.Selector```, ``:func:`...```,
``:mod:``, ``:data:``, ``:meth:``, ``:attr:``); MkDocs renders Markdown, where they would show as
raw text. This extension rewrites each role to inline code (the last component with ``~``, the
full name without), before mkdocstrings renders the docstring.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _code(m: re.Match[str]) -> str:
    name = m.group(2).strip()
    if m.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"`{name}`"


def rewrite_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by inline code."""
    return _ROLE.sub(_code, text)


class SphinxRolesAsCode(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for every module, class, function and attribute."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite_roles(obj.docstring.value)
