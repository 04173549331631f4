"""What the command line prints and saves: aligned tables, CSV files, the matplotlib check."""

from __future__ import annotations

import csv

from lightning_influence.cli.loading import CLIError

__all__ = ["require_matplotlib", "table", "write_csv"]


def table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns, one line per row.

    Example:
        >>> print(table(["rank", "index"], [["0", "17"]]))
        rank  index
           0     17
    """
    widths = [
        max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def write_csv(path: str, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def require_matplotlib(flag: str) -> None:
    """A ``CLIError`` naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(
            f"{flag} needs matplotlib: pip install 'lightning-influence[plot]', or leave out {flag}"
        ) from None
