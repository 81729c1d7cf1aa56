"""The self-contained HTML report and the plots: every table row and every plot is present."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

from test_leaderboard import HEST_TASKS, write_hest_run, write_plism_run

from pathbench import leaderboard as lb
from pathbench.cli import main
from pathbench.leaderboard import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportParser(HTMLParser):
    """Collects table rows per table, figures with their images, and every external reference."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[dict]] = {}
        self.table_id = None
        self.groups: list[str] = []
        self.figures: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table_id = attrs.get("id")
            self.rows.setdefault(self.table_id, [])
        elif tag == "tbody" and "data-protocol" in attrs:
            self.groups.append(attrs["data-protocol"])
        elif tag == "tr" and self.table_id and "data-model" in attrs:
            self.rows[self.table_id].append(attrs)
        elif tag == "figure":
            self.figures.append(attrs.get("data-plot"))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag == "table":
            self.table_id = None


def _report(tmp_path, bench, reference=None) -> tuple[lb.Leaderboard, ReportParser, str]:
    out = tmp_path / f"{bench}.html"
    argv = ["--bench", bench, "--results", str(tmp_path / "results"), "--format", "html", "--out", str(out),
            "--n-boot", "100", "--plots", str(tmp_path / "png")]
    if reference:
        argv += ["--reference", reference]
    assert main(["leaderboard", *argv]) == 0
    board = lb.build_leaderboard(bench, tmp_path / "results", reference, n_boot=100)
    text = out.read_text(encoding="utf-8")
    report = ReportParser()
    report.feed(text)
    return board, report, text


def test_plism_report_holds_every_row_plot_and_provenance_without_network(tmp_path):
    write_plism_run(tmp_path / "results", "model-a", offset=0.02, seed=1)
    write_plism_run(tmp_path / "results", "model-b", offset=-0.02, seed=2)
    broken = write_plism_run(tmp_path / "results", "broken")
    (broken / "results.csv").unlink()
    board, report, text = _report(tmp_path, "plism")

    table_models = [row["data-model"] for row in report.rows["leaderboard"]]
    assert sorted(table_models) == sorted(e.model for e in board.entries)
    assert len(table_models) == 17  # 15 plismbench rows and two runs
    assert report.groups == [g.protocol for g in board.groups]
    provenance_models = [row["data-model"] for row in report.rows["provenance-table"]]
    assert sorted(provenance_models) == sorted(table_models)
    assert "comparisons" in report.rows and text.count("<td>Wilcoxon signed-rank") + text.count(
        "<td>paired bootstrap") == len(board.comparisons)

    assert report.figures == ["plism_figure1", "plism_figure4", "plism_cost"]
    assert len(report.images) == 3
    for src in report.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert report.external == [] and report.scripts == 0
    assert "skipped" in text and "broken" in text
    assert "plismbench README leaderboard (2025-03-03)" in text
    for name in ("plism_figure1", "plism_figure4", "plism_cost"):
        assert (tmp_path / "png" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_hest_report_has_task_bars_and_the_kaiko_footnote(tmp_path):
    write_hest_run(tmp_path / "results", "h0-mini", tasks=HEST_TASKS, data="hf", seed=3)
    write_hest_run(tmp_path / "results", "model-a", seed=1)
    board, report, text = _report(tmp_path, "hest")
    assert sorted(row["data-model"] for row in report.rows["leaderboard"]) == sorted(e.model for e in board.entries)
    assert len(board.entries) == 11  # 10 published rows (h0-mini merged) and the synthetic run
    assert report.figures == ["hest_tasks", "hest_cost"]
    assert "Kaiko ViT-B/8 publishes average = 0.3912" in text
    assert "published 0.4044" in text  # h0-mini: your value beside the published one


def test_plots_are_png_for_runs_without_references(tmp_path):
    write_plism_run(tmp_path, "model-a")
    board = lb.build_leaderboard("plism", tmp_path, "none", n_boot=50)
    figures = plots.leaderboard_plots(board)
    assert set(figures) == {"plism_figure1", "plism_figure4", "plism_cost"}
    for png, caption in figures.values():
        assert png.startswith(PNG_MAGIC) and caption


def test_the_legend_is_drawn_outside_the_axes_so_it_covers_no_point(tmp_path):
    import matplotlib.pyplot as plt

    write_plism_run(tmp_path, "model-a")
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=20)
    figure, ax = plt.subplots()
    plots._panel(ax, board, board.benchmark.leaderboard.plots[0].panels[0], [e for e in board.entries if e.is_run])
    figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # beside the axes
    plt.close(figure)


def test_point_labels_never_print_over_each_other():
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    points = [(f"model-{i}", 0.5 + 0.001 * i, 0.5 + 0.001 * i) for i in range(8)]  # nearly one spot
    plots._scatter(ax, points, "red", "o", "runs")
    plots._scatter(ax, [("published-a", 0.5, 0.5), ("published-b", 0.5005, 0.5)], "blue", "o", "refs")
    assert plots.declutter(figure) == 0
    plt.close(figure)
