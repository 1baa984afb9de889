"""A report as blocks (headings, paragraphs, tables, images, SVG charts, code), rendered to Markdown and to one
self-contained HTML page from the same content: what ``report.md``/``report.html`` and ``compare.md``/``.html``
are made of."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.numbers import fmt
from report.html import TableCell, as_cell, contents, page, slug
from report.html import table as html_table


@dataclass
class Document:
    """A report as blocks, rendered to Markdown and to HTML from the same content."""

    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def table(self, header: list[str], rows: list[list[Any]], name: str | None = None) -> None:
        """A table of raw values (formatted with ``fmt``, sorted by value in HTML) or ``TableCell``s; ``name``
        gives it an HTML id."""
        cells = [[v if isinstance(v, TableCell) else as_cell(v, fmt(v)) for v in row] for row in rows]
        self.blocks.append(("table", header, cells, name))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", Path(path), alt))

    def svg(self, markup: str, path: Path | None, alt: str) -> None:
        """An SVG chart: inline in HTML, a link to ``path`` (written by the caller) in Markdown, or a line naming
        the chart when ``path`` is None (the HTML page alone holds it)."""
        self.blocks.append(("svg", markup, None if path is None else Path(path), alt))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        """The document as Markdown; images are links relative to the report's directory."""
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "para":
                out.append(block[1])
            elif kind == "table":
                header, rows = block[1], block[2]
                lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                lines += ["| " + " | ".join(c.text.replace("|", "/") for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "image":
                out.append(f"![{block[2]}]({block[1].name})")
            elif kind == "svg":
                # A chart written only into the HTML page is named where it would be.
                out.append(
                    f"![{block[3]}]({block[2].name})" if block[2] is not None else f"*Chart: {block[3]} (HTML page).*"
                )
            elif kind == "code":
                out.append("```\n" + block[1].rstrip() + "\n```")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        """The document as one HTML page: images embedded as base64, charts as inline SVG, style and script
        inline (``report.html``), so nothing beside it or on a network is needed."""
        body: list[str] = []
        sections: list[tuple[str, str]] = []
        used: set[str] = set()
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                ident = slug(block[2])
                while ident in used:
                    ident += "-x"
                used.add(ident)
                if block[1] == 2:
                    sections.append((ident, block[2]))
                part = f'<h{block[1]} id="{ident}">{html.escape(block[2])}</h{block[1]}>'
            elif kind == "para":
                part = f"<p>{html.escape(block[1])}</p>"
            elif kind == "table":
                part = html_table(block[1], block[2], block[3])
            elif kind == "image":
                data = base64.b64encode(block[1].read_bytes()).decode("ascii")
                part = f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}"></figure>'
            elif kind == "svg":
                part = f"<figure>{block[1]}</figure>"
            else:
                part = f"<pre>{html.escape(block[1])}</pre>"
            body.append(part)
        # The contents go under the title and the run's one-line summary.
        body.insert(min(2, len(body)), contents(sections))
        return page(title, body)
