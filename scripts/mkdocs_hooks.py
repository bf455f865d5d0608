"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml)."""

from __future__ import annotations

from typing import Any


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Blank the default of options that have none in the CLI reference: click 8.3+ marks them
    with a sentinel that mkdocs-click 0.9 prints as ``Sentinel.UNSET``."""
    return html.replace("<code>Sentinel.UNSET</code>", "")
