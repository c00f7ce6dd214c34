"""Markdown tables, the one rendering shared by every report (diagnostic, evaluation, the generic job report)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the header row, the separator, then one line per row (cells as given:
    the caller formats and escapes them)."""
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
