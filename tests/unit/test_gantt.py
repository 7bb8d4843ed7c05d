"""Gantt chart rendering: SVG structure, HTML self-containment, PNG sanity, format choice."""

from __future__ import annotations

import dataclasses
import pathlib
import struct
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from counterpoint.gantt import (
    SUPPORTED_FORMATS,
    GanttBar,
    GanttChart,
    gantt_html,
    gantt_svg,
    render_gantt,
)

SVG_NS = "{http://www.w3.org/2000/svg}"
HOUR = 3600.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_bar(task: str, start_h: float, finish_h: float, **overrides: Any) -> GanttBar:
    """A bar with sensible defaults, times given in hours."""
    bar = GanttBar(
        task=task,
        label=f"Task {task}",
        phase="build",
        phase_label="Build",
        milestone="m1",
        start_s=start_h * HOUR,
        finish_s=finish_h * HOUR,
        agent="agent-1",
        critical=False,
    )
    return dataclasses.replace(bar, **overrides)


def sample_chart() -> GanttChart:
    """Three tasks of 1h, 2h and 4h over two phases; the first and last are critical."""
    bars = [
        make_bar("a", 0, 1, critical=True),
        make_bar("b", 1, 3, phase="test", phase_label="Test", agent=None),
        make_bar("c", 1, 5, critical=True),
    ]
    return GanttChart(title="Sample plan", bars=bars, makespan_s=5 * HOUR)


def bar_shapes(svg_text: str) -> list[ET.Element]:
    """Every element drawn as a task's bar (rect or milestone diamond), top row first."""
    root = ET.fromstring(svg_text)
    return [el for el in root.iter() if "bar" in el.get("class", "").split()]


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_svg_parses_and_has_one_bar_rect_per_task() -> None:
    shapes = bar_shapes(gantt_svg(sample_chart()))

    assert [el.tag for el in shapes] == [f"{SVG_NS}rect"] * 3
    assert [el.get("data-task") for el in shapes] == ["a", "b", "c"]


def test_svg_bar_widths_are_proportional_to_durations() -> None:
    widths = [float(el.get("width", "0")) for el in bar_shapes(gantt_svg(sample_chart()))]

    assert widths[1] == pytest.approx(2 * widths[0], rel=0.01)
    assert widths[2] == pytest.approx(4 * widths[0], rel=0.01)


def test_svg_bars_start_where_their_tasks_start() -> None:
    xs = [float(el.get("x", "0")) for el in bar_shapes(gantt_svg(sample_chart()))]

    assert xs[1] == pytest.approx(xs[2])
    assert xs[0] < xs[1]


def test_critical_bars_are_outlined_in_the_svg_and_others_are_not() -> None:
    shapes = bar_shapes(gantt_svg(sample_chart()))

    critical = {el.get("data-task") for el in shapes if "critical" in el.get("class", "")}
    outlined = {el.get("data-task") for el in shapes if float(el.get("stroke-width", "0")) >= 2}
    assert critical == {"a", "c"}
    assert outlined == {"a", "c"}


def test_critical_rows_are_starred_and_the_legend_explains_it() -> None:
    root = ET.fromstring(gantt_svg(sample_chart()))
    labels = [el.text or "" for el in root.iter(f"{SVG_NS}text") if el.get("class") == "row-label"]
    legend = root.find(f"{SVG_NS}g[@class='legend']")

    assert legend is not None
    assert [label.startswith("★") for label in labels] == [True, False, True]
    assert "critical path" in "".join(legend.itertext())


def test_bars_are_coloured_by_phase_and_the_legend_lists_phases() -> None:
    svg = gantt_svg(sample_chart())
    fills = [el.get("fill") for el in bar_shapes(svg)]
    legend = ET.fromstring(svg).find(f"{SVG_NS}g[@class='legend']")

    assert fills[0] == fills[2] != fills[1]
    assert legend is not None
    assert {"Build", "Test"} <= {el.text for el in legend.iter(f"{SVG_NS}text")}


def test_more_phases_than_colours_cycle_through_the_palette() -> None:
    bars = [make_bar(str(i), i, i + 1, phase=f"p{i}", phase_label=f"P{i}") for i in range(20)]
    fills = [el.get("fill") for el in bar_shapes(gantt_svg(GanttChart("many", bars, 20 * HOUR)))]

    assert all(fills)
    assert 1 < len(set(fills)) < 20


def test_special_characters_in_names_are_escaped_and_the_svg_still_parses() -> None:
    nasty = "<script>alert('x')</script> & \"quotes\" \x01"
    bar = make_bar("t<1>&", 0, 1, label=nasty, phase_label=nasty, agent='a"b')
    svg = gantt_svg(GanttChart(title=f"Plan {nasty}", bars=[bar], makespan_s=HOUR))

    root = ET.fromstring(svg)
    assert "<script>" not in svg
    assert "<script>alert('x')</script>" in (root.findtext(f"{SVG_NS}title") or "")
    assert [el.get("data-task") for el in bar_shapes(svg)] == ["t<1>&"]


def test_each_task_has_a_tooltip_with_its_details_in_human_units() -> None:
    root = ET.fromstring(gantt_svg(sample_chart()))
    rows = [el for el in root.iter(f"{SVG_NS}g") if el.get("class") == "task"]
    tooltip = rows[1].findtext(f"{SVG_NS}title") or ""

    assert len(rows) == 3
    for expected in ("b", "Task b", "Test", "m1", "unassigned", "1h", "3h", "duration: 2h"):
        assert expected in tooltip


def test_long_labels_are_truncated() -> None:
    bar = make_bar("long", 0, 1, label="x" * 500)
    root = ET.fromstring(gantt_svg(GanttChart("t", [bar], HOUR)))
    label = next(
        el.text or "" for el in root.iter(f"{SVG_NS}text") if el.get("class") == "row-label"
    )

    assert label.endswith("…")
    assert len(label) < 60


def test_zero_duration_tasks_are_still_drawn() -> None:
    bars = [make_bar("a", 0, 2), make_bar("gate", 2, 2, critical=True)]
    shapes = bar_shapes(gantt_svg(GanttChart("t", bars, 2 * HOUR)))

    assert [el.get("data-task") for el in shapes] == ["a", "gate"]
    assert shapes[1].tag == f"{SVG_NS}polygon"
    assert "critical" in (shapes[1].get("class") or "")


def test_axis_unit_follows_the_makespan() -> None:
    def axis_text(makespan_s: float) -> str:
        chart = GanttChart("t", [make_bar("a", 0, makespan_s / HOUR)], makespan_s)
        return gantt_svg(chart)

    assert "time (days)" in axis_text(3 * 86400)
    assert "time (hours)" in axis_text(5 * HOUR)
    assert "time (minutes)" in axis_text(600)


def test_many_bars_render_without_row_labels() -> None:
    bars = [make_bar(str(i), i / 100, i / 100 + 1) for i in range(2500)]
    svg = gantt_svg(GanttChart("big", bars, 30 * HOUR))
    root = ET.fromstring(svg)

    assert len(bar_shapes(svg)) == 2500
    assert not [el for el in root.iter(f"{SVG_NS}text") if el.get("class") == "row-label"]


def test_empty_chart_renders_valid_svg_and_html() -> None:
    chart = GanttChart(title="Nothing to do", bars=[], makespan_s=0.0)

    assert bar_shapes(gantt_svg(chart)) == []
    assert "<svg" in gantt_html(chart)


def test_html_is_a_single_file_embedding_the_svg_without_remote_assets() -> None:
    page = gantt_html(sample_chart())

    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1
    assert "http://" not in page
    assert "https://" not in page
    assert "<link" not in page
    assert " src=" not in page
    assert "<title>" in page


def test_html_escapes_special_characters() -> None:
    bar = make_bar("x", 0, 1, label="</svg><script>bad()</script>")
    page = gantt_html(GanttChart("<b>&</b>", [bar], HOUR))

    assert "<script>bad()" not in page
    assert "<b>&</b>" not in page
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in page


@pytest.mark.parametrize("suffix", [".svg", ".SVG", ".html"])
def test_render_gantt_writes_text_formats_by_suffix(tmp_path: pathlib.Path, suffix: str) -> None:
    path = tmp_path / f"chart{suffix}"
    render_gantt(sample_chart(), path)

    text = path.read_text(encoding="utf-8")
    if suffix.lower() == ".svg":
        ET.fromstring(text)
    else:
        assert text.startswith("<!DOCTYPE html>")


def test_render_gantt_writes_a_png_of_sane_size(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "chart.png"
    render_gantt(sample_chart(), path)

    width, height = png_size(path)
    assert 400 <= width <= 3000
    assert 150 <= height <= 2000


def test_png_of_very_many_tasks_stays_a_sane_size(tmp_path: pathlib.Path) -> None:
    bars = [make_bar(str(i), i / 10, i / 10 + 2, critical=i % 7 == 0) for i in range(1500)]
    bars.append(make_bar("gate", 5, 5))
    path = tmp_path / "big.PNG"
    render_gantt(GanttChart("big $plan$", bars, 152 * HOUR), path)

    width, height = png_size(path)
    assert width <= 3000
    assert height <= 8000


def test_empty_chart_renders_a_png(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.png"
    render_gantt(GanttChart("Nothing", [], 0.0), path)

    width, height = png_size(path)
    assert width > 0
    assert height > 0


def test_unknown_suffix_raises_value_error_naming_it(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"\.pdf") as excinfo:
        render_gantt(sample_chart(), tmp_path / "chart.pdf")

    assert all(fmt in str(excinfo.value) for fmt in SUPPORTED_FORMATS)
    assert not (tmp_path / "chart.pdf").exists()


def test_missing_suffix_raises_value_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="no suffix"):
        render_gantt(sample_chart(), tmp_path / "chart")
