"""Small helpers for terminal output: aligned tables, durations, short times."""

from __future__ import annotations

from collections.abc import Sequence

_MAX_CELL = 60


def duration(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1000:.0f}µs"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 120_000:
        return f"{ms / 1000:.2f}s"
    return f"{ms / 60_000:.1f}m"


def clock(iso_time: str) -> str:
    """``2026-11-21T05:35:36.336123Z`` → ``05:35:36.336``."""
    _, _, rest = iso_time.partition("T")
    return rest[:12] if rest else iso_time


def cell(value: object, limit: int = _MAX_CELL) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> list[str]:
    """Rows under headers, columns padded to their widest cell; the last column is never padded."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = []
    for row in [list(headers), *cells]:
        padded = [value.ljust(widths[index]) for index, value in enumerate(row[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(padded)).rstrip())
    return lines
