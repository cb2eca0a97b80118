"""Markdown tables: the one writer of the reports, model cards, set summaries and comparisons (in the data layer,
the lowest, so that the set summaries use it too)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str | Sequence[str] = "---"
) -> str:
    """A table with a line per row; ``align`` is one separator cell (``---``, ``--:``, ``:-:``) for every
    column or one per column. A ``|`` in a cell is escaped (it would end the cell early)."""
    aligns = [align] * len(header) if isinstance(align, str) else list(align)
    lines = [_row(header), "|" + "|".join(aligns) + "|"]
    lines += [_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def matrix_table(corner: str, names: Sequence[str], matrix: Iterable[Sequence[object]]) -> str:
    """A square matrix (a confusion): ``corner`` heads the column of row names (``true \\ predicted``), the names
    head the columns too; each row's name in bold, the counts right-aligned."""
    rows = [[f"**{name}**", *row] for name, row in zip(names, matrix, strict=True)]
    return markdown_table([corner, *names], rows, align=[":--"] + ["--:"] * len(names))


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
