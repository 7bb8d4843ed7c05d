"""Gantt chart rendering of a schedule as SVG, PNG or self-contained HTML.

One row per task, bars coloured by phase, critical-path bars outlined in a thick dark
stroke and marked with a star in their label. SVG and HTML are written by hand (no
dependencies, no network); PNG is drawn with matplotlib's Agg canvas, never pyplot.
"""

from __future__ import annotations

import html
import math
import pathlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from counterpoint.durations import format_duration

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SUPPORTED_FORMATS = (".svg", ".png", ".html")

# Okabe-Ito colour-blind-friendly palette (black left out: it is the critical outline).
_PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")
_CRITICAL_STROKE = "#111111"
_CRITICAL_MARK = "★"

_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0
_SVG_LABEL_ROWS_MAX = 2000
_PNG_LABEL_ROWS_MAX = 400
_LABEL_CHARS = 36
_LEGEND_CHARS = 30
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class GanttBar:
    """One task as scheduled: where its bar goes and what its tooltip says."""

    task: str
    label: str
    phase: str
    phase_label: str
    milestone: str
    start_s: float
    finish_s: float
    agent: str | None
    critical: bool


@dataclass(frozen=True, slots=True)
class GanttChart:
    """A titled list of bars, top row first, and the schedule's makespan."""

    title: str
    bars: Sequence[GanttBar]
    makespan_s: float


def render_gantt(chart: GanttChart, path: pathlib.Path) -> None:
    """Write ``chart`` to ``path`` in the format named by its suffix (case-insensitive)."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        shown = repr(path.suffix) if path.suffix else "(no suffix)"
        raise ValueError(
            f"unsupported Gantt chart format {shown} for {path}: "
            f"use one of {', '.join(SUPPORTED_FORMATS)}"
        )
    if suffix == ".png":
        _write_png(chart, path)
    elif suffix == ".svg":
        path.write_text(gantt_svg(chart), encoding="utf-8")
    else:
        path.write_text(gantt_html(chart), encoding="utf-8")


# --------------------------------------------------------------------------- shared helpers


def _duration_s(bar: GanttBar) -> float:
    """Length of a bar in seconds; never negative."""
    return max(0.0, bar.finish_s - bar.start_s)


def _span_s(chart: GanttChart) -> float:
    """Seconds covered by the time axis: the makespan or the last finish, at least a minute."""
    ends = [chart.makespan_s, *(bar.finish_s for bar in chart.bars)]
    span = max((end for end in ends if math.isfinite(end)), default=0.0)
    return span if span > 0 else _MINUTE


def _time_unit(span_s: float) -> tuple[str, float]:
    """Axis unit for a span: days from 2 days, hours from 2 hours, else minutes."""
    if span_s >= 2 * _DAY:
        return "days", _DAY
    if span_s >= 2 * _HOUR:
        return "hours", _HOUR
    return "minutes", _MINUTE


def _ticks(span_s: float, unit_s: float) -> list[float]:
    """Tick positions in axis units at a 1/2/5 x 10^k step, about 5 to 10 of them."""
    span_u = span_s / unit_s
    raw = span_u / 8
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    count = int(span_u / step + 1e-9)
    return [round(k * step, 9) for k in range(count + 1)]


def _phases(bars: Sequence[GanttBar]) -> list[tuple[str, str]]:
    """``(phase id, phase label)`` pairs in order of first appearance."""
    seen: dict[str, str] = {}
    for bar in bars:
        seen.setdefault(bar.phase, bar.phase_label or bar.phase)
    return list(seen.items())


def _phase_colours(bars: Sequence[GanttBar]) -> dict[str, str]:
    """Palette colour per phase id, cycling when there are more phases than colours."""
    return {phase: _PALETTE[i % len(_PALETTE)] for i, (phase, _) in enumerate(_phases(bars))}


def _human(seconds: float) -> str:
    """A duration in human units, ``?`` when it is not a finite number."""
    return format_duration(seconds) if math.isfinite(seconds) else "?"


def _makespan_text(chart: GanttChart) -> str:
    """The makespan in human units."""
    return _human(max(chart.makespan_s, 0.0))


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row_label(bar: GanttBar) -> str:
    """The label shown left of a bar: its name, starred when critical."""
    name = _truncate(bar.label or bar.task, _LABEL_CHARS)
    return f"{_CRITICAL_MARK} {name}" if bar.critical else name


def _tooltip(bar: GanttBar) -> str:
    """Multi-line hover text: everything known about the task, durations in human units."""
    lines = [
        f"{bar.task}: {bar.label}" + (f"  {_CRITICAL_MARK} critical path" if bar.critical else ""),
        f"phase: {bar.phase_label} ({bar.phase})",
        f"milestone: {bar.milestone}",
        f"agent: {bar.agent if bar.agent is not None else 'unassigned'}",
        f"start: +{_human(bar.start_s)}  finish: +{_human(bar.finish_s)}",
        f"duration: {_human(_duration_s(bar))}",
    ]
    return "\n".join(lines)


def _esc(text: str) -> str:
    """XML-escape text for element content and double-quoted attributes."""
    return escape(_XML_INVALID.sub("\ufffd", text), {'"': "&quot;"})


def _num(value: float) -> str:
    """A coordinate rendered compactly."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- SVG


@dataclass(frozen=True, slots=True)
class _Layout:
    """Pixel geometry of an SVG chart."""

    width: float
    label_w: float
    plot_w: float
    legend_y: float
    legend_lines: int
    plot_top: float
    row_h: float
    rows: int
    span_s: float
    unit: tuple[str, float]
    show_labels: bool

    def x(self, seconds: float) -> float:
        """Pixel x of a time offset."""
        return self.label_w + self.plot_w * min(max(seconds, 0.0), self.span_s) / self.span_s

    @property
    def plot_bottom(self) -> float:
        """Pixel y below the last row."""
        return self.plot_top + self.row_h * max(self.rows, 1)

    @property
    def height(self) -> float:
        """Total document height."""
        return self.plot_bottom + 34


_LEGEND_Y = 44.0
_CRITICAL_KEY = "\0critical"  # legend keys that cannot clash with a phase id
_MILESTONE_KEY = "\0milestone"
_LEGEND_LINE_H = 20.0
_CHAR_W = 7.0


def _legend_entries(chart: GanttChart) -> list[tuple[str, str]]:
    """``(kind, text)`` legend entries; kind is a phase id, ``critical`` or ``milestone``."""
    entries = [(phase, _truncate(label, _LEGEND_CHARS)) for phase, label in _phases(chart.bars)]
    entries.append((_CRITICAL_KEY, f"{_CRITICAL_MARK} critical path (thick dark outline)"))
    if any(_duration_s(bar) == 0 for bar in chart.bars):
        entries.append((_MILESTONE_KEY, "zero-duration task"))
    return entries


def _legend_flow(entries: list[tuple[str, str]], width: float) -> list[tuple[float, int]]:
    """``(x, line)`` of each legend entry, wrapping lines at ``width``."""
    placed: list[tuple[float, int]] = []
    x, line = 10.0, 0
    for _, text in entries:
        item_w = 24 + _CHAR_W * len(text) + 16
        if x > 10 and x + item_w > width - 10:
            x, line = 10.0, line + 1
        placed.append((x, line))
        x += item_w
    return placed


def _layout(chart: GanttChart) -> _Layout:
    """Compute the chart geometry; rows get thin and labels go away above 2000 bars."""
    rows = len(chart.bars)
    show_labels = rows <= _SVG_LABEL_ROWS_MAX
    width = 1200.0
    label_w = 280.0 if show_labels else 70.0
    flow = _legend_flow(_legend_entries(chart), width)
    legend_lines = flow[-1][1] + 1
    span = _span_s(chart)
    return _Layout(
        width=width,
        label_w=label_w,
        plot_w=width - label_w - 30,
        legend_y=_LEGEND_Y,
        legend_lines=legend_lines,
        plot_top=_LEGEND_Y + legend_lines * _LEGEND_LINE_H + 26,
        row_h=20.0 if show_labels else 4.0,
        rows=rows,
        span_s=span,
        unit=_time_unit(span),
        show_labels=show_labels,
    )


def _svg_legend(chart: GanttChart, layout: _Layout, colours: dict[str, str]) -> list[str]:
    """Legend swatches: one per phase, then the critical-path and milestone markings."""
    entries = _legend_entries(chart)
    out = ['<g class="legend">']
    for (kind, text), (x, line) in zip(entries, _legend_flow(entries, layout.width), strict=True):
        y = layout.legend_y + line * _LEGEND_LINE_H
        if kind == _MILESTONE_KEY:
            points = _diamond_points(x + 9, y, 6)
            out.append(f'<polygon points="{points}" fill="#777777" stroke="#555555"/>')
        else:
            stroke = (
                f' stroke="{_CRITICAL_STROKE}" stroke-width="3"' if kind == _CRITICAL_KEY else ""
            )
            fill = colours.get(kind, "#ffffff")
            out.append(
                f'<rect x="{_num(x)}" y="{_num(y - 6)}" width="18" height="12" '
                f'fill="{fill}"{stroke}/>'
            )
        out.append(f'<text x="{_num(x + 24)}" y="{_num(y + 4)}">{_esc(text)}</text>')
    out.append("</g>")
    return out


def _svg_axis(layout: _Layout) -> list[str]:
    """Vertical gridlines with tick labels above the rows, the unit at the left."""
    name, unit_s = layout.unit
    top, bottom = layout.plot_top, layout.plot_bottom
    out = ['<g class="axis" font-size="11" fill="#333333">']
    out.append(
        f'<text x="{_num(layout.label_w - 14)}" y="{_num(top - 8)}" text-anchor="end">'
        f"time ({name})</text>"
    )
    for tick in _ticks(layout.span_s, unit_s):
        x = _num(layout.x(tick * unit_s))
        out.append(
            f'<line class="grid" x1="{x}" y1="{_num(top)}" x2="{x}" y2="{_num(bottom)}" '
            'stroke="#dddddd" stroke-width="1"/>'
        )
        out.append(f'<text x="{x}" y="{_num(top - 8)}" text-anchor="middle">{tick:g}</text>')
    out.append("</g>")
    return out


def _svg_makespan(chart: GanttChart, layout: _Layout) -> list[str]:
    """A dashed line at the makespan, labelled below the rows (nothing when it is zero)."""
    if not (math.isfinite(chart.makespan_s) and chart.makespan_s > 0):
        return []
    x = _num(layout.x(chart.makespan_s))
    top, bottom = _num(layout.plot_top), _num(layout.plot_bottom)
    label = f"makespan {_makespan_text(chart)}"
    return [
        f'<line class="makespan" x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" '
        'stroke="#444444" stroke-dasharray="4 3"/>',
        f'<text x="{x}" y="{_num(layout.plot_bottom + 16)}" text-anchor="end" '
        f'font-size="11">{_esc(label)}</text>',
    ]


def _diamond_points(cx: float, cy: float, r: float) -> str:
    """Polygon points of a diamond of half-size ``r`` centred on (cx, cy)."""
    corners = ((cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy))
    return " ".join(f"{_num(x)},{_num(y)}" for x, y in corners)


def _svg_bar_shape(bar: GanttBar, top: float, layout: _Layout, fill: str) -> str:
    """The bar itself: a rectangle, or a diamond when the task takes no time."""
    bar_h = layout.row_h * 0.7
    x0 = layout.x(bar.start_s)
    classes = "bar critical" if bar.critical else "bar"
    task = f'data-task="{_esc(bar.task)}"'
    stroke = f'stroke="{_CRITICAL_STROKE}" stroke-width="2.5"' if bar.critical else ""
    if _duration_s(bar) == 0:
        points = _diamond_points(x0, top + layout.row_h / 2, bar_h / 2)
        stroke = stroke or 'stroke="#555555" stroke-width="1"'
        return (
            f'<polygon class="{classes} milestone" {task} points="{points}" '
            f'fill="{fill}" {stroke}/>'
        )
    width = max(layout.x(bar.finish_s) - x0, 1.0)
    y = top + (layout.row_h - bar_h) / 2
    return (
        f'<rect class="{classes}" {task} x="{_num(x0)}" y="{_num(y)}" width="{_num(width)}" '
        f'height="{_num(bar_h)}" fill="{fill}" {stroke}/>'
    )


def _svg_row(bar: GanttBar, index: int, layout: _Layout, fill: str) -> str:
    """One task row: a group with its tooltip, its label and its bar."""
    top = layout.plot_top + index * layout.row_h
    parts = [
        f'<g class="task" data-task="{_esc(bar.task)}">',
        f"<title>{_esc(_tooltip(bar))}</title>",
    ]
    if layout.show_labels:
        weight = ' font-weight="bold"' if bar.critical else ""
        parts.append(
            f'<text class="row-label" x="{_num(layout.label_w - 8)}" '
            f'y="{_num(top + layout.row_h * 0.7)}" text-anchor="end"{weight}>'
            f"{_esc(_row_label(bar))}</text>"
        )
    parts.append(_svg_bar_shape(bar, top, layout, fill))
    parts.append("</g>")
    return "".join(parts)


def _svg_document(chart: GanttChart, *, standalone: bool) -> str:
    """The SVG markup; ``standalone`` adds the XML declaration and namespace."""
    layout = _layout(chart)
    colours = _phase_colours(chart.bars)
    w, h = _num(layout.width), _num(layout.height)
    head = '<?xml version="1.0" encoding="UTF-8"?>\n' if standalone else ""
    xmlns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    out = [
        f'{head}<svg{xmlns} class="gantt" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="12">',
        f"<title>{_esc(chart.title)}</title>",
        f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
        f'<text x="10" y="24" font-size="16" font-weight="bold">{_esc(chart.title)}</text>',
        *_svg_legend(chart, layout, colours),
        *_svg_axis(layout),
    ]
    out.extend(_svg_row(bar, i, layout, colours[bar.phase]) for i, bar in enumerate(chart.bars))
    if not chart.bars:
        x, y = _num(layout.label_w + 8), _num(layout.plot_top + 14)
        out.append(f'<text x="{x}" y="{y}" fill="#777777">no tasks</text>')
    out.extend(_svg_makespan(chart, layout))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def gantt_svg(chart: GanttChart) -> str:
    """A standalone SVG document of the chart (each task row carries a ``<title>`` tooltip)."""
    return _svg_document(chart, standalone=True)


# --------------------------------------------------------------------------- HTML

_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #222; }
.chart { overflow: auto; }
.gantt .task:hover .bar { opacity: 0.75; }
.gantt .task:hover .row-label { text-decoration: underline; }
#tip { position: absolute; pointer-events: none; white-space: pre-line; background: #fff;
       border: 1px solid #888; border-radius: 4px; padding: 4px 8px; font-size: 12px;
       box-shadow: 0 2px 6px rgba(0, 0, 0, 0.2); }
"""

# Moves each row's <title> into a data attribute and shows it in a styled, instant tooltip.
_HTML_SCRIPT = """
(function () {
  var tip = document.getElementById("tip");
  document.querySelectorAll(".gantt .task").forEach(function (row) {
    var title = row.querySelector("title");
    if (title) { row.setAttribute("data-tip", title.textContent); title.remove(); }
  });
  document.addEventListener("mousemove", function (event) {
    var row = event.target.closest ? event.target.closest(".gantt .task") : null;
    if (!row) { tip.hidden = true; return; }
    tip.textContent = row.getAttribute("data-tip");
    tip.style.left = (event.pageX + 14) + "px";
    tip.style.top = (event.pageY + 14) + "px";
    tip.hidden = false;
  });
})();
"""


def gantt_html(chart: GanttChart) -> str:
    """A self-contained HTML page (no external assets) embedding the SVG with hover tooltips."""
    title = html.escape(_XML_INVALID.sub("\ufffd", chart.title))
    critical = sum(1 for bar in chart.bars if bar.critical)
    summary = (
        f"{len(chart.bars)} tasks, makespan {_makespan_text(chart)}, "
        f"{critical} on the critical path ({_CRITICAL_MARK}, thick dark outline). "
        "Hover over a bar for details."
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n<p>{html.escape(summary)}</p>\n"
        f'<div class="chart">\n{_svg_document(chart, standalone=False)}</div>\n'
        f'<div id="tip" hidden></div>\n<script>{_HTML_SCRIPT}</script>\n</body>\n</html>\n'
    )


# --------------------------------------------------------------------------- PNG

_PNG_WIDTH_IN = 12.0
_PNG_ROW_IN = 0.28
_PNG_PLOT_MAX_IN = 50.0
_PNG_DPI = 100


def _mpl_text(text: str) -> str:
    """Text safe from matplotlib's mathtext (``$`` would start a formula)."""
    return text.replace("$", r"\$")


def _png_box(row: int, left: float, right: float) -> list[tuple[float, float]]:
    """Corners of a bar in data coordinates (rows are 1 unit apart, bars 0.7 tall)."""
    return [(left, row - 0.35), (right, row - 0.35), (right, row + 0.35), (left, row + 0.35)]


def _png_plot_bars(ax: Axes, chart: GanttChart, unit_s: float, colours: dict[str, str]) -> None:
    """Draw the bars (zero-duration tasks as diamonds), critical ones with a dark edge."""
    from matplotlib.collections import PolyCollection

    timed = [(i, bar) for i, bar in enumerate(chart.bars) if _duration_s(bar) > 0]
    # One collection rather than barh's one patch per bar: 10,000 bars draw in well under 1s.
    boxes = [_png_box(i, bar.start_s / unit_s, bar.finish_s / unit_s) for i, bar in timed]
    bars = PolyCollection(
        boxes,
        facecolors=[colours[bar.phase] for _, bar in timed],
        edgecolors=[_CRITICAL_STROKE if bar.critical else "none" for _, bar in timed],
        linewidths=[2.0 if bar.critical else 0.0 for _, bar in timed],
    )
    ax.add_collection(bars, autolim=False)
    instant = [(i, bar) for i, bar in enumerate(chart.bars) if _duration_s(bar) == 0]
    if instant:
        ax.scatter(
            [bar.start_s / unit_s for _, bar in instant],
            [i for i, _ in instant],
            marker="D",
            s=30,
            c=[colours[bar.phase] for _, bar in instant],
            edgecolors=[_CRITICAL_STROKE if bar.critical else "#555555" for _, bar in instant],
            linewidths=[2.0 if bar.critical else 0.5 for _, bar in instant],
            zorder=3,
        )


def _png_rows(ax: Axes, chart: GanttChart, row_in: float) -> None:
    """Row labels (dropped above 400 rows) and the top-to-bottom row order."""
    rows = len(chart.bars)
    ax.set_ylim(max(rows, 1) - 0.5, -0.5)
    if rows == 0:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no tasks", transform=ax.transAxes, ha="center", color="#777777")
    elif rows <= _PNG_LABEL_ROWS_MAX:
        size = max(4.0, min(9.0, row_in * 72 * 0.6))
        labels = [_mpl_text(_row_label(bar)) for bar in chart.bars]
        ax.set_yticks(range(rows), labels, fontsize=size)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{rows} tasks (labels omitted)")


def _png_legend(ax: Axes, chart: GanttChart, colours: dict[str, str]) -> None:
    """Legend right of the plot: phases, then the critical-path marking."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=colours[phase], label=_mpl_text(_truncate(label, _LEGEND_CHARS)))
        for phase, label in _phases(chart.bars)
    ]
    handles.append(
        Patch(
            facecolor="#ffffff",
            edgecolor=_CRITICAL_STROKE,
            linewidth=2.0,
            label=f"{_CRITICAL_MARK} critical path",
        )
    )
    ncol = 1 + len(handles) // 40
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol, fontsize=8)


def _png_axes(ax: Axes, chart: GanttChart, span_s: float, unit: tuple[str, float]) -> None:
    """Title, time axis with gridlines, and the makespan line."""
    name, unit_s = unit
    ax.set_title(_mpl_text(chart.title))
    ax.set_xlim(0, span_s / unit_s)
    ax.set_xlabel(f"time ({name})")
    ax.grid(axis="x", color="#dddddd")
    ax.set_axisbelow(True)
    if math.isfinite(chart.makespan_s) and chart.makespan_s > 0:
        ax.axvline(chart.makespan_s / unit_s, color="#444444", linestyle="--", linewidth=1)


def _write_png(chart: GanttChart, path: pathlib.Path) -> None:
    """Render the chart as a PNG with matplotlib's Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(len(chart.bars), 1)
    plot_in = min(rows * _PNG_ROW_IN, _PNG_PLOT_MAX_IN)
    fig = Figure(figsize=(_PNG_WIDTH_IN, plot_in + 1.5), dpi=_PNG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    span = _span_s(chart)
    unit = _time_unit(span)
    colours = _phase_colours(chart.bars)
    _png_axes(ax, chart, span, unit)
    _png_plot_bars(ax, chart, unit[1], colours)
    _png_rows(ax, chart, plot_in / rows)
    _png_legend(ax, chart, colours)
    with warnings.catch_warnings():
        # A task name in a script the font lacks should not stop the chart from rendering.
        warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
        fig.savefig(path, format="png", bbox_inches="tight")
