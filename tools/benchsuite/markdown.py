"""A small Markdown writer and the number formats of the report."""

from __future__ import annotations

from typing import Any


class Markdown:
    """Lines of a Markdown document, added a paragraph or a table at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def heading(self, text: str) -> None:
        """Add a second-level heading."""
        self.paragraph(f"## {text}")

    def paragraph(self, *parts: str) -> None:
        """Add the parts, joined with spaces, as one paragraph."""
        self.lines += [" ".join(parts), ""]

    def bullets(self, items: list[str]) -> None:
        """Add a bullet list."""
        self.lines += [f"- {item}" for item in items] + [""]

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        """Add a table; None cells are left empty."""
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
        self.lines.append("")

    def text(self) -> str:
        """Return the document."""
        return "\n".join(self.lines)


def us(value: float | None) -> str:
    """Return microseconds with the precision their size deserves."""
    return "" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def x(value: float | None) -> str:
    """Return a ratio as '1.23x'."""
    return "" if value is None else f"{value:.2f}x"


def per_s(side: dict) -> str:
    """Return the operations per second one side's median duration stands for."""
    return f"{1e6 / side['median_us']:,.0f}"


def mib(n: int) -> str:
    """Return a byte count in MiB."""
    return f"{n / 1024 / 1024:,.1f} MiB"
