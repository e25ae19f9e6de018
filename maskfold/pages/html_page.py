"""Self-contained HTML pages: tables that sort on a click, inline pictures, one file that opens anywhere."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8}
.sub{color:#5b6473;margin-bottom:12px}.warn{background:#fff4e5;border:1px solid #f0c27b;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;margin:6px 0 14px;background:#fff}th,td{border:1px solid #dde1e8;padding:3px 8px;
text-align:right;white-space:nowrap}td.wrap{white-space:normal;max-width:440px;text-align:left}
.scroll{overflow-x:auto}th{background:#eef1f6;position:sticky;top:0}td.l,th.l{text-align:left}
table.sortable th{cursor:pointer}table.sortable th[data-dir=asc]::after{content:" \\25B2"}
table.sortable th[data-dir=desc]::after{content:" \\25BC"}.best{font-weight:600;color:#0b6b2e}
.figs img{max-width:100%;margin:4px 8px 4px 0;border:1px solid #dde1e8;background:#fff}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}.thumb{width:104px;font-size:11px;line-height:1.25}
.thumb img{width:100px;height:133px;object-fit:cover;border:2px solid #c9ced8;display:block}
.thumb.bad img{border-color:#d64545}.row{display:flex;gap:6px;align-items:flex-start;margin:6px 0}
.row .who{width:170px;font-size:12px}details{margin:6px 0}summary{cursor:pointer;color:#2453a6}
"""

SCRIPT = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
asc=th.dataset.dir!=='asc',rows=[...t.tBodies[0].rows];
rows.sort((a,b)=>{const x=a.cells[i].dataset.v??a.cells[i].textContent,y=b.cells[i].dataset.v??b.cells[i].textContent,
nx=parseFloat(x),ny=parseFloat(y),c=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(String(y)):nx-ny;return asc?c:-c});
rows.forEach(r=>t.tBodies[0].appendChild(r));th.parentNode.querySelectorAll('th').forEach(h=>delete h.dataset.dir);
th.dataset.dir=asc?'asc':'desc'}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
document.body.dataset.ready='1';
"""


def esc(x) -> str:
    return html.escape(str(x))


def cell(v, fmt: str = "{:.4f}", cls: str = "") -> str:
    """A table cell; numbers carry their value for sorting."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "<td data-v=''></td>"
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return f"<td data-v='{float(v)}' class='{cls}'>{esc(fmt.format(v))}</td>"
    return f"<td class='l {cls}' data-v='{esc(v)}'>{esc(v)}</td>"


def table(header: list[str], rows: list[list[str]], sortable: bool = True, table_id: str = "") -> str:
    """rows: lists of cells made by cell(); header: column names."""
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{esc(h)}</th>" for i, h in enumerate(header))
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    attrs = (f" id='{table_id}'" if table_id else "") + (" class='sortable'" if sortable else "")
    return f"<div class='scroll'><table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def heat(v: float, lo: float = 0.0, hi: float = 1.0) -> str:
    """A cell shaded from red (lo) to green (hi)."""
    if v is None or not np.isfinite(v):
        return "<td data-v=''></td>"
    t = float(np.clip((v - lo) / max(hi - lo, 1e-9), 0, 1))
    r, g = int(235 - 120 * t), int(120 + 100 * t)
    return f"<td data-v='{v}' style='background:rgb({r},{g},130)'>{v:.3f}</td>"


def thumb_uri(path: Path, size=(100, 133)) -> str | None:
    """A small JPEG of a photo as a data: URI (None if it cannot be read)."""
    from PIL import Image

    from maskfold.cli import UserError
    from maskfold.images import read_image

    try:
        im = Image.fromarray(read_image(path, reduce=2))
    except (UserError, OSError):
        return None
    im.thumbnail(size)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=78)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def jpeg_uri(path: Path, width: int = 1100) -> str | None:
    """A picture file (a preview sheet, say) as a data: URI, no wider than `width`."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.width > width:
                im = im.resize((width, round(im.height * width / im.width)))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def thumb(uri: str | None, lines: list[str], bad: bool = False) -> str:
    img = f"<img src='{uri}' alt=''>" if uri else "<div style='width:100px;height:133px;background:#ddd'></div>"
    return f"<div class='thumb{' bad' if bad else ''}'>{img}{'<br>'.join(esc(x) for x in lines)}</div>"


def page(title: str, subtitle: str, sections: list[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><div class='sub'>{esc(subtitle)}</div>"
            + "".join(sections) + f"<script>{SCRIPT}</script></body></html>")
