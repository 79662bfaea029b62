"""The building blocks of a self-contained HTML page: escaped text, tables, images embedded as
base64 PNG, and the Markdown subset ssmtl's result tables are written in. No external asset:
the page opens the same from a laptop, an e-mail or an archive years later."""

from __future__ import annotations

import base64
import html
import re
from typing import Any, Iterable

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; } td.num { text-align: right; }
th { background: #f3f3f3; } tr.total td { font-weight: bold; }
img { max-width: 100%; } figure { margin: 0.8em 0; } figcaption { color: #555; font-size: 0.85em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
code { background: #f3f3f3; padding: 0 0.2em; }
.note { color: #8a5a00; }
"""


def text(value: Any) -> str:
    return html.escape(str(value))


#: how ``ssmtl report`` recognises a page it wrote (it replaces its own pages, nothing else)
GENERATOR = '<meta name="generator" content="ssmtl report">'


def page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n" + GENERATOR + "\n"
            f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def image(png: bytes, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    figure = f'<figure><img src="data:image/png;base64,{data}" alt="{text(alt)}">'
    return figure + (f"<figcaption>{text(caption)}</figcaption>" if caption else "") + "</figure>"


NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?|–")


def table(header: list[str] | None, rows: Iterable[list[Any]], total: list[Any] | None = None) -> str:
    """Numbers (and numbers already formatted as text, and "–") are right-aligned."""
    def cells(row: list[Any], tag: str) -> str:
        def align(v: Any) -> str:
            numeric = isinstance(v, (int, float)) or (isinstance(v, str) and NUMBER.fullmatch(v))
            return ' class="num"' if numeric else ""

        return "".join(f"<{tag}{align(v)}>{text(v)}</{tag}>" for v in row)

    lines = ["<table>"] + ([f"<tr>{cells(header, 'th')}</tr>"] if header else [])
    lines += [f"<tr>{cells(row, 'td')}</tr>" for row in rows]
    if total is not None:
        lines.append(f'<tr class="total">{cells(total, "td")}</tr>')
    return "\n".join(lines + ["</table>"])


def _inline(line: str) -> str:
    escaped = html.escape(line)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def markdown(source: str) -> str:
    """Headings, paragraphs and pipe tables (the Markdown ``experiments.results`` writes) as HTML."""
    out: list[str] = []
    rows: list[list[str]] = []

    def close_table() -> None:
        if rows:
            header, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body) + "</table>")
            rows.clear()

    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # skip the |---| separator row
                rows.append(cells)
            continue
        close_table()
        heading = re.match(r"^(#{1,4})\s+(.*)$", stripped)
        if heading:
            level = min(len(heading.group(1)) + 1, 5)  # the page's own title is the only h1
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif stripped:
            out.append(f"<p>{_inline(stripped)}</p>")
    close_table()
    return "\n".join(out)
