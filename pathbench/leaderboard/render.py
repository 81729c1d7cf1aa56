"""Leaderboards as Markdown, CSV and LaTeX (the HTML report is in :mod:`.html`)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from pathbench.leaderboard.build import ALPHA, DEGENERATE_MARK, MARK_BEST, MARK_SECOND, Entry, Leaderboard
from pathbench.leaderboard.references import SOURCE_LABELS
from pathbench.leaderboard.statistics import ColumnDef


def fmt(value: float, decimals: int) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{decimals}f}"


def cell_parts(board: Leaderboard, entry: Entry, column: ColumnDef) -> dict[str, str]:
    """The pieces of one cell: value, extra (IQR/std), CI, published, difference, markers."""
    decimals = board.decimals
    value = entry.values.get(column.key, float("nan"))
    parts = {"value": entry.text.get(column.key) or fmt(value, decimals), "extra": "", "ci": "", "published": "",
             "diff": "", "sig": "", "note": ""}
    if column.key in entry.extras and np.isfinite(value):
        parts["extra"] = entry.extras[column.key]
    if column.key in entry.ci and np.isfinite(value):
        low, high = entry.ci[column.key]
        parts["ci"] = f"[{fmt(low, decimals)}, {fmt(high, decimals)}]"
    if column.key in entry.published:
        published = entry.published[column.key]
        parts["published"] = entry.published_text.get(column.key) or fmt(published, decimals)
        if np.isfinite(value):
            parts["diff"] = f"{value - published:+.{decimals}f}"
    comparison = entry.significance.get(column.key)
    if comparison is not None and comparison.significant:
        parts["sig"] = "*"
    if entry.cell_notes.get(column.key):
        parts["note"] = "‡"
    if column.key in entry.computed and np.isfinite(value):
        parts["note"] += "†"
    return parts


def source_label(entry: Entry) -> str:
    if entry.is_run:
        label = f"your run ({entry.run.path.name})"
        if entry.origin == "run+reference":
            label += f" + {entry.provenance.get('reference', '')}"
        return label
    source = SOURCE_LABELS.get(entry.provenance.get("source", ""), entry.provenance.get("source", ""))
    return f"{source} {entry.provenance.get('table', '')} ({entry.provenance.get('date', '')})".strip()


def plain_cell(parts: dict[str, str], with_details: bool = True) -> str:
    text = parts["value"]
    if parts["extra"]:
        text += f" ({parts['extra']})" if not parts["extra"].startswith("±") else f" {parts['extra']}"
    if with_details and parts["ci"]:
        text += f" {parts['ci']}"
    if parts["published"]:
        text += f" (pub. {parts['published']}"
        text += f", Δ {parts['diff']})" if parts["diff"] else ")"
    return text + parts["sig"] + parts["note"]


def title(board: Leaderboard) -> str:
    ref = ("no reference table" if board.reference == "none"
           else f"reference: {SOURCE_LABELS.get(board.reference, board.reference)}")
    return f"{board.title} leaderboard ({ref})"


def group_detail(board: Leaderboard, group) -> str:
    """The protocol's description, and which columns each averaging column covers there."""
    detail = group.protocol_detail
    labels = {c.key: c.label for c in board.columns}
    for key, parts in group.averages.items():
        column = next(c for c in board.columns if c.key == key)
        if column.parts is None and parts:
            detail += f"; {labels[key]} over {', '.join(labels.get(p, p) for p in parts)}"
    return detail


def legend_lines(board: Leaderboard) -> list[str]:
    lines = ["Ranks and best (bold) / second-best (underlined) marks are computed within each protocol only."]
    if any(e.ci for e in board.entries):
        lines.append("[a, b]: bootstrap 95 % confidence interval of your run's value.")
    if any(e.published for e in board.entries):
        lines.append("(pub. x, Δ d): the published value of the same model under the same protocol, and yours minus it.")
    if board.comparisons:
        lines.append(f"*: significantly below the best of your runs in that column (Holm-corrected p < {ALPHA}, "
                     f"{len(board.comparisons)} comparisons); see the statistics table.")
    if any(e.cell_notes for e in board.entries):
        lines.append("‡: see the footnotes.")
    if any(e.computed for e in board.entries):
        lines.append("†: computed from the published values of the row (not published).")
    if any(e.degenerate for e in board.entries):
        lines.append(f"{DEGENERATE_MARK}: the run's embedding diagnostics flag a degenerate model (near-constant or "
                     "low-rank embeddings); a benchmark such a model wins measures nothing (docs/diagnostics.md).")
    return lines


def footnotes(board: Leaderboard) -> list[str]:
    notes = list(board.footnotes)
    for entry in board.entries:
        for note in entry.notes:
            notes.append(f"{entry.model} ({entry.protocol}): {note}")
    for skipped in board.skipped:
        notes.append(skipped.describe())
    return notes


def column_label(board: Leaderboard, key: str) -> str:
    return next((c.label for c in board.columns if c.key == key), key)


def render_markdown(board: Leaderboard) -> str:
    """The leaderboard as a Markdown table (one section row per protocol) plus notes."""
    header = ["Rank", "Model", "Pooling", "Source"] + [c.label for c in board.columns]
    lines = [f"## {title(board)}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---:", "---", "---", "---"] + ["---:"] * len(board.columns)) + "|"]
    for group in board.groups:
        lines.append("| " + " | ".join([f"**{group.protocol}**", f"*{group_detail(board, group)}*"]
                                       + [""] * (len(header) - 2)) + " |")
        for entry in group.entries:
            cells = [str(entry.rank) if entry.rank else "–", entry.label, entry.pooling, source_label(entry)]
            for column in board.columns:
                text = plain_cell(cell_parts(board, entry, column))
                mark = entry.marks.get(column.key)
                if mark == MARK_BEST:
                    text = f"**{text}**"
                elif mark == MARK_SECOND:
                    text = f"<u>{text}</u>"
                cells.append(text)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.extend(legend_lines(board))
    if board.comparisons:
        lines += ["", "### Paired comparisons (your runs on the same data)", "",
                  "| Column | Best run | Compared run | Units | Difference [95 % CI] | Test | p | Holm p | Significant |",
                  "|---|---|---|---:|---|---|---:|---:|---|"]
        for c in board.comparisons:
            lines.append(f"| {column_label(board, c.column)} | {c.better} | {c.other} | {c.n_units} | "
                         f"{c.difference:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.test} | {c.pvalue:.3g} | "
                         f"{c.p_holm:.3g} | {'yes' if c.significant else 'no'} |")
    notes = footnotes(board)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def leaderboard_frame(board: Leaderboard) -> pd.DataFrame:
    """One tidy row per table row: rank, model, protocol, provenance, and per column the value,
    CI, published value, Holm p of the paired comparison and best/second mark."""
    records = []
    for group in board.groups:
        for entry in group.entries:
            record: dict[str, Any] = {
                "protocol": entry.protocol, "protocol_detail": entry.protocol_detail, "rank": entry.rank,
                "model": entry.model, "model_key": entry.model_key, "origin": entry.origin,
                "degenerate": bool(entry.degenerate),
                "pooling": entry.pooling, "source": entry.provenance.get("source", ""),
                "table": entry.provenance.get("table", ""), "date": entry.provenance.get("date", ""),
                "run_dir": entry.provenance.get("run_dir", ""),
            }
            for column in board.columns:
                k = column.key
                value = entry.values.get(k, float("nan"))
                record[k] = entry.text.get(k) or (None if not np.isfinite(value) else round(value, 6))
                low, high = entry.ci.get(k, (float("nan"), float("nan")))
                record[f"{k}_ci_low"] = None if not np.isfinite(low) else round(low, 6)
                record[f"{k}_ci_high"] = None if not np.isfinite(high) else round(high, 6)
                record[f"{k}_published"] = entry.published_text.get(k) or entry.published.get(k)
                comparison = entry.significance.get(k)
                record[f"{k}_p_holm"] = None if comparison is None else round(comparison.p_holm, 6)
                record[f"{k}_mark"] = entry.marks.get(k, "")
            record["notes"] = "; ".join(entry.notes + [n for ns in entry.cell_notes.values() for n in ns])
            records.append(record)
    return pd.DataFrame.from_records(records)


def render_csv(board: Leaderboard) -> str:
    """The leaderboard as CSV (see :func:`leaderboard_frame`)."""
    buffer = io.StringIO()
    leaderboard_frame(board).to_csv(buffer, index=False)
    return buffer.getvalue()


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "Δ": r"$\Delta$", "⚠": r"(!)", "±": r"$\pm$", "–": "--", "‡": r"$^\ddagger$", "†": r"$^\dagger$",
                  "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(board: Leaderboard) -> str:
    """The leaderboard as a booktabs LaTeX table (``\\textbf`` best, ``\\underline`` second)."""
    n = 3 + len(board.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + latex_escape(title(board)) + "}",
             r"\begin{tabular}{rll" + "r" * len(board.columns) + "}", r"\toprule",
             " & ".join(["Rank", "Model", "Pooling"] + [latex_escape(c.label) for c in board.columns]) + r" \\",
             r"\midrule"]
    for i, group in enumerate(board.groups):
        if i:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{n}}}{{l}}{{\emph{{{latex_escape(group.protocol)}: "
                     rf"{latex_escape(group_detail(board, group))}}}}} \\")
        for entry in group.entries:
            cells = [str(entry.rank) if entry.rank else "--", latex_escape(entry.label), latex_escape(entry.pooling)]
            for column in board.columns:
                text = latex_escape(plain_cell(cell_parts(board, entry, column), with_details=False))
                mark = entry.marks.get(column.key)
                if mark == MARK_BEST:
                    text = rf"\textbf{{{text}}}"
                elif mark == MARK_SECOND:
                    text = rf"\underline{{{text}}}"
                cells.append(text)
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    notes = legend_lines(board) + footnotes(board)
    return "\n".join(lines + ["% " + n for n in notes]) + "\n"
