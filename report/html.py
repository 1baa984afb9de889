"""The interactive parts of the HTML report and comparison: the page frame with its style and script, tables
that sort on a header click and filter as one types, pass and fail in colour, and a contents list.

Everything is inline: no font, script or style comes from a network, so the file opens offline as it is.
The script is small on purpose; the page reads in full without it (the tables simply do not sort).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1.5em 2em;max-width:1400px;
color:#1d1d1d;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav.toc{font-size:13px;margin:.5em 0 1.2em}nav.toc a{margin-right:1em;white-space:nowrap}
table{border-collapse:collapse;margin:.4em 0 1.2em;font-size:13px}
th,td{border:1px solid #d4d4d4;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";font-size:9px}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";font-size:9px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.pass{background:#e3f4e1;color:#14601c;font-weight:600}
td.fail{background:#fbe0df;color:#a01212;font-weight:600}
td.undecided{background:#fdf2d4;color:#6e5200;font-weight:600}
input.filter{margin:.6em 0 0;padding:3px 6px;font-size:13px;width:18em}
svg.chart{max-width:100%;height:auto;border:1px solid #e4e4e4}
img{max-width:100%}figure{margin:0 0 1em}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
p.note{color:#555;font-size:13px}
"""

# Sort: numbers by their data-sort value, text otherwise, empty cells last either way. Filter: rows whose text
# holds every word typed (case-insensitive). Hidden rows keep their place, so sorting a filtered table works.
SCRIPT = """
(function(){
function key(cell){var s=cell.getAttribute('data-sort');
 if(s!==null&&s!==''&&!isNaN(Number(s)))return Number(s);var t=cell.textContent.trim();return t===''?null:t;}
function sortBy(table,index,th){var asc=th.getAttribute('aria-sort')!=='ascending';
 table.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',asc?'ascending':'descending');var body=table.tBodies[0];
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[index]),y=key(b.cells[index]);
  if(x===null||y===null)return (x===null)-(y===null);
  var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y),undefined,{numeric:true});
  return asc?c:-c;});
 rows.forEach(function(r){body.appendChild(r);});}
document.querySelectorAll('table.sortable').forEach(function(table){
 table.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){sortBy(table,i,th);});});
 if(table.tBodies[0].rows.length<8)return;
 var input=document.createElement('input');input.type='search';input.className='filter';
 input.placeholder='filter rows (e.g. int8 fail)';input.setAttribute('aria-label','filter the table below');
 table.parentNode.insertBefore(input,table);
 input.addEventListener('input',function(){var words=input.value.toLowerCase().split(/\\s+/).filter(Boolean);
  Array.prototype.forEach.call(table.tBodies[0].rows,function(r){var text=r.textContent.toLowerCase();
   r.hidden=!words.every(function(w){return text.indexOf(w)>=0;});});});});
})();
"""


@dataclass(frozen=True)
class TableCell:
    """A table cell as shown (``text``), the raw value it sorts by (``sort``; None sorts by text) and its CSS
    class (``pass``, ``fail``, ``undecided``, ``num``)."""

    text: str
    sort: float | str | None = None
    css: str | None = None


def slug(text: str) -> str:
    """An HTML id from a heading or table name: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def table(header: Sequence[str], rows: Sequence[Sequence[TableCell]], table_id: str | None = None) -> str:
    """A sortable (and, from eight rows, filterable) table of ``TableCell`` rows; ``data-sort`` carries raw numbers."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            attrs = f' class="{cell.css}"' if cell.css else ""
            if cell.sort is not None:
                attrs += f' data-sort="{html.escape(str(cell.sort))}"'
            cells.append(f"<td{attrs}>{html.escape(cell.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return f'<table class="sortable"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def contents(headings: Sequence[tuple[str, str]]) -> str:
    """A line of links to the page's sections, (id, text) each."""
    links = "".join(f'<a href="#{html.escape(i)}">{html.escape(t)}</a>' for i, t in headings)
    return f'<nav class="toc">{links}</nav>'


def page(title: str, body: Sequence[str]) -> str:
    """One self-contained HTML page: ``body`` parts (HTML) with the inline style and script."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def as_cell(value: Any, text: str) -> TableCell:
    """A cell for a raw ``value`` shown as ``text``: numbers sort by value and align right, ``pass`` and
    ``FAIL`` (also as a leading word) take their colour."""
    if isinstance(value, TableCell):
        return value
    if isinstance(value, bool):
        return TableCell(text)
    if isinstance(value, int | float):
        return TableCell(text, value if value == value else None, "num")
    word = text.split(" ", 1)[0]
    if word == "pass":
        return TableCell(text, None, "pass")
    if word == "FAIL":
        return TableCell(text, None, "fail")
    return TableCell(text)
