"""The leaderboard as one self-contained HTML page (table, statistics, plots, provenance)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pathbench.leaderboard.build import ALPHA, Entry, Leaderboard
from pathbench.leaderboard.references import AVERAGE_TOLERANCE
from pathbench.leaderboard.render import (
    cell_parts,
    column_label,
    footnotes,
    group_detail,
    legend_lines,
    source_label,
    title,
)
from pathbench.leaderboard.statistics import ColumnDef

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1280px;padding:0 1.5rem;color:#1f2933;background:#fff;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #e4e7eb;
padding-bottom:.3rem}.sub{color:#616e7c;margin-top:0}
table{border-collapse:collapse;width:100%;font-size:.88rem;margin:.8rem 0}
th,td{padding:.35rem .55rem;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
th{background:#f5f7fa;font-weight:600}thead th{position:sticky;top:0}td.num{text-align:right;white-space:nowrap}
tr.group th{background:#e8eef7;color:#243b53;font-weight:600;text-align:left}
tr.run td{background:#fffbea}tr.merged td{background:#effcf6}
.best{font-weight:700}.second{text-decoration:underline}.small{display:block;color:#616e7c;font-size:.75rem}
.sig{color:#c62828;font-weight:700}.yes{color:#c62828;font-weight:600}.no{color:#616e7c}
figure{margin:1.2rem 0;text-align:center}figure img{max-width:100%;border:1px solid #e4e7eb;border-radius:4px}
figcaption{color:#616e7c;font-size:.85rem;margin-top:.3rem}ul.notes li{margin:.2rem 0}
code{background:#f5f7fa;padding:0 .25rem;border-radius:3px}.legend{color:#3e4c59;font-size:.85rem}
"""


def _html_cell(board: Leaderboard, entry: Entry, column: ColumnDef) -> str:
    parts = cell_parts(board, entry, column)
    mark = entry.marks.get(column.key)
    cls = {"best": "best", "second": "second"}.get(mark or "", "")
    value = html.escape(parts["value"])
    if parts["extra"]:
        value += html.escape(f" ({parts['extra']})" if not parts["extra"].startswith("±") else f" {parts['extra']}")
    inner = f'<span class="{cls}">{value}</span>' if cls else value
    if parts["sig"]:
        inner += '<span class="sig" title="significantly below the best run (Holm)">*</span>'
    if "‡" in parts["note"]:
        notes = "; ".join(entry.cell_notes.get(column.key, []))
        inner += f'<sup title="{html.escape(notes)}">‡</sup>'
    if "†" in parts["note"]:
        inner += '<sup title="computed from the published values of the row (not published)">†</sup>'
    if parts["ci"]:
        inner += f'<span class="small">95 % CI {html.escape(parts["ci"])}</span>'
    if parts["published"]:
        diff = f", Δ {parts['diff']}" if parts["diff"] else ""
        inner += f'<span class="small">published {html.escape(parts["published"])}{html.escape(diff)}</span>'
    comparison = entry.significance.get(column.key)
    if comparison is not None:
        inner += f'<span class="small">vs {html.escape(comparison.better)}: Holm p {comparison.p_holm:.3g}</span>'
    return f'<td class="num" data-column="{html.escape(column.key)}">{inner}</td>'


def render_html(board: Leaderboard, plots: dict[str, tuple[bytes, str]] | None = None) -> str:
    """One self-contained HTML page: the table, the statistics, the plots (PNG embedded as
    base64), the provenance of every row, the reference checks and the skipped runs."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(title(board))}</title><style>{_CSS}</style></head><body>",
           f"<h1>{esc(title(board))}</h1>",
           f'<p class="sub">pathbench leaderboard · benchmark <code>{esc(board.bench)}</code> · '
           f"{len(board.runs)} run(s) of yours · {sum(not e.is_run for e in board.entries)} reference row(s) · "
           f"{len(board.groups)} protocol(s)</p>",
           '<h2 id="table">Leaderboard</h2>', '<table id="leaderboard"><thead><tr>',
           "".join(f"<th>{esc(h)}</th>" for h in ["Rank", "Model", "Pooling", "Source"])
           + "".join(f'<th title="{esc(c.description)}">{esc(c.label)}</th>' for c in board.columns),
           "</tr></thead>"]
    width = 4 + len(board.columns)
    for group in board.groups:
        out.append(f'<tbody data-protocol="{esc(group.protocol)}"><tr class="group"><th colspan="{width}">'
                   f"Protocol <code>{esc(group.protocol)}</code>: {esc(group_detail(board, group))}</th></tr>")
        for entry in group.entries:
            cls = {"run": "run", "run+reference": "merged"}.get(entry.origin, "reference")
            out.append(f'<tr class="{cls}" data-model="{esc(entry.model)}" data-origin="{esc(entry.origin)}">'
                       f"<td>{entry.rank or '–'}</td><td>{esc(entry.label)}</td><td>{esc(entry.pooling)}</td>"
                       f"<td>{esc(source_label(entry))}</td>"
                       + "".join(_html_cell(board, entry, c) for c in board.columns) + "</tr>")
        out.append("</tbody>")
    out.append("</table>")
    out.append('<div class="legend">' + "<br>".join(esc(line) for line in legend_lines(board)) + "</div>")

    out.append('<h2 id="statistics">Paired comparisons</h2>')
    if board.comparisons:
        out.append('<table id="comparisons"><thead><tr>' + "".join(
            f"<th>{h}</th>" for h in ["Column", "Best run", "Compared run", "Units", "Difference", "95 % CI",
                                      "Test", "p", "Holm p", "Significant"]) + "</tr></thead><tbody>")
        for c in board.comparisons:
            out.append(f"<tr><td>{esc(column_label(board, c.column))}</td><td>{esc(c.better)}</td><td>{esc(c.other)}</td>"
                       f'<td class="num">{c.n_units}</td><td class="num">{c.difference:+.4f}</td>'
                       f'<td class="num">[{c.ci_low:+.4f}, {c.ci_high:+.4f}]</td><td>{esc(c.test)}</td>'
                       f'<td class="num">{c.pvalue:.3g}</td><td class="num">{c.p_holm:.3g}</td>'
                       f'<td class="{"yes" if c.significant else "no"}">{"yes" if c.significant else "no"}</td></tr>')
        out.append("</tbody></table>")
        out.append(f'<p class="legend">Each run is compared with the best of your runs in the same column, on the '
                   f"units both share; p-values are Holm-corrected across the {len(board.comparisons)} comparisons "
                   f"shown (significant: Holm p &lt; {ALPHA}).</p>")
    else:
        out.append('<p class="legend">No paired comparison: they need at least two of your runs on the same '
                   "data and protocol.</p>")

    out.append('<h2 id="plots">Plots</h2>')
    for name, (png, caption) in (plots or {}).items():
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure data-plot="{esc(name)}"><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{esc(caption)}</figcaption></figure>")
    if not plots:
        out.append('<p class="legend">No plot for this benchmark and these rows.</p>')

    out.append('<h2 id="provenance">Provenance of every row</h2><table id="provenance-table"><thead><tr>'
               + "".join(f"<th>{h}</th>" for h in ["Model", "Protocol", "Pooling", "Origin", "Details"])
               + "</tr></thead><tbody>")
    for entry in board.entries:
        details = "; ".join(f"{k}: {v}" for k, v in entry.provenance.items() if v not in ("", None))
        out.append(f'<tr data-model="{esc(entry.model)}"><td>{esc(entry.model)}</td><td><code>{esc(entry.protocol)}'
                   f"</code></td><td>{esc(entry.pooling)}</td><td>{esc(entry.origin)}</td><td>{esc(details)}</td></tr>")
    out.append("</tbody></table>")

    out.append('<h2 id="checks">Reference checks and notes</h2><ul class="notes">')
    relevant = [c for c in board.checks
                if c.source_file in {Path(e.provenance.get("file", "")).name for e in board.entries}]
    bad = [c for c in relevant if not c.ok]
    out.append(f"<li>{len(relevant) - len(bad)} of {len(relevant)} published averages in the reference rows shown "
               f"match the mean of their values within {AVERAGE_TOLERANCE}.</li>")
    for note in footnotes(board):
        out.append(f"<li>{esc(note)}</li>")
    out.append("</ul>")
    out.append('<p class="sub">Generated by <code>pathbench leaderboard</code>; this page needs no network.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
