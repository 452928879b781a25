"""Self-contained HTML report: sections with text, tables and captioned figures.

Images are embedded as base64 ``data:`` URIs, so ``report.html`` is one file that
can be mailed or archived. A section is a dict::

    {"title": str,                    # required
     "html": str,                     # optional trusted HTML body
     "text": str,                     # optional plain text (escaped)
     "table": pandas.DataFrame,       # optional, rendered with its first rows
     "image": path or [paths],        # optional PNG/JPEG/SVG file(s)
     "caption": str}                  # required when an image or table is given

``extra_sections`` from the workflow use the same keys. A section without a title,
or with a figure or table but no caption, raises ``ValueError``; an image file that
is missing or of an unknown type is reported inside the section (and logged) rather
than failing the whole report.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from locatlas.atomic import write_text

log = logging.getLogger(__name__)

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45}
h1{border-bottom:2px solid #3a7;padding-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #ccc}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption,.caption{font-size:.9em;color:#555;margin-top:.3em}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0;display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}
nav ol{columns:2}
"""


def embed_image(path: str | os.PathLike) -> str:
    """``<img>`` tag with the file embedded as a base64 data URI.

    Raises
    ------
    ValueError
        When the file is missing or of an unknown type (names the file).
    """
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: unsupported image type (use png, jpg or svg)")
    if not path.is_file():
        raise ValueError(f"{path}: image not found")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{html.escape(path.name)}">'


def _section_html(i: int, s: dict, max_rows: int) -> str:
    if "title" not in s:
        raise ValueError(f"report section {i} has no title: {sorted(s)}")
    body = [f'<h2 id="s{i}">{html.escape(str(s["title"]))}</h2>']
    if s.get("text"):
        body.append(f"<p>{html.escape(str(s['text']))}</p>")
    if s.get("html"):
        body.append(str(s["html"]))
    has_media = s.get("image") is not None or s.get("table") is not None
    if has_media and not s.get("caption"):
        raise ValueError(f"report section {s['title']!r}: a figure or table needs a caption")
    table = s.get("table")
    if isinstance(table, pd.DataFrame):
        shown = table.head(max_rows)
        more = f" (first {max_rows} of {len(table)} rows)" if len(table) > max_rows else ""
        body.append(
            shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0)
        )
        if not s.get("image"):
            body.append(f'<p class="caption">{html.escape(str(s["caption"]))}{more}</p>')
    images = s.get("image")
    if images is not None:
        if isinstance(images, str | os.PathLike):
            images = [images]
        for img in images:
            try:
                tag = embed_image(img)
            except ValueError as exc:  # a missing figure must not sink the whole report
                log.warning("report: %s", exc)
                body.append(
                    f'<p class="caption"><b>Figure missing:</b> {html.escape(str(exc))}</p>'
                )
                continue
            body.append(
                f"<figure>{tag}<figcaption>{html.escape(str(s['caption']))}</figcaption></figure>"
            )
    return "\n".join(body)


def render_report(
    sections: Sequence[dict],
    path: str | os.PathLike,
    *,
    title: str = "locatlas: protein localization atlas",
    max_rows: int = 30,
) -> Path:
    """Write the report to ``path`` (atomically) and return the path."""
    toc = "".join(
        f'<li><a href="#s{i}">{html.escape(str(s.get("title", "")))}</a></li>'
        for i, s in enumerate(sections)
    )
    parts = [_section_html(i, s, max_rows) for i, s in enumerate(sections)]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><nav><ol>{toc}</ol></nav>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    return write_text(doc, path)
