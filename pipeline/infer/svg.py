"""Small inline SVG line charts for the HTML reports (no plotting dependency).

`line_chart` draws one or more series against a shared x axis (epochs), with "nice" ticks,
a legend, and an optional dashed marker (e.g. the evaluated checkpoint's epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
WIDTH, HEIGHT = 460, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 30, 58  # margins around the plot area (px)
MARKERS_UP_TO = 40  # points get a dot while a series has at most this many


@dataclass
class Series:
    """One line: y values (None = missing) at x positions."""

    name: str
    xs: list[float]
    ys: list[float | None]


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values covering [low, high] (whole numbers if `integer`)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, math.ceil(step))
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def format_tick(value: float) -> str:
    """Short tick label: 0.0015 -> '0.0015', 1.5e-08 -> '1.5e-08', 12.0 -> '12'."""
    if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e5):
        return f"{value:.2g}"
    return f"{value:.4g}"


def series_colour(index: int) -> str:
    """The colour of the index-th series (cycling through PALETTE)."""
    return PALETTE[index % len(PALETTE)]


def line_chart(
    series: list[Series],
    title: str,
    marker_x: float | None = None,
    marker_label: str = "",
    legend: bool = True,
) -> str:
    """An <svg> element (a string) plotting `series`; a note instead when there is no data.

    Series i is drawn in `series_colour(i)`; `legend=False` leaves the legend to the page.
    """
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True) if _finite(y)]
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<text class="chart-title" x="{LEFT}" y="18">{escape(title)}</text>'
    )
    if not points:
        return (
            head + f'<text class="chart-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
            'text-anchor="middle">no data</text></svg>'
        )
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs), integer=True), nice_ticks(min(ys), max(ys))
    frame = _Frame(x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1])
    parts = [head, _axes(frame, x_ticks, y_ticks)]
    if marker_x is not None:
        parts.append(_marker(frame, marker_x, marker_label))
    for index, line in enumerate(series):
        parts.append(_polyline(frame, line, series_colour(index)))
    if legend:
        parts.append(_legend(series))
    return "".join(parts) + "</svg>"


@dataclass
class _Frame:
    """Data range -> pixel mapping of the plot area."""

    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return LEFT + (x - self.x0) / span * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return HEIGHT - BOTTOM - (y - self.y0) / span * (HEIGHT - TOP - BOTTOM)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _axes(frame: _Frame, x_ticks: list[float], y_ticks: list[float]) -> str:
    """Grid lines, tick labels and the 'epoch' axis title."""
    out = []
    for y in y_ticks:
        py = frame.py(y)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py:.1f}" '
            f'y2="{py:.1f}"/><text class="tick" x="{LEFT - 6}" y="{py + 4:.1f}" '
            f'text-anchor="end">{format_tick(y)}</text>'
        )
    for x in x_ticks:
        px = frame.px(x)
        out.append(
            f'<text class="tick" x="{px:.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{format_tick(x)}</text>'
        )
    base = HEIGHT - BOTTOM
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>')
    out.append(
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{base + 30}" text-anchor="end">epoch</text>'
    )
    return "".join(out)


def _marker(frame: _Frame, x: float, label: str) -> str:
    px = frame.px(x)
    return (
        f'<line class="marker" x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" '
        f'y2="{HEIGHT - BOTTOM}"/><text class="tick" x="{px + 4:.1f}" y="{TOP + 10}">'
        f"{escape(label)}</text>"
    )


def _polyline(frame: _Frame, line: Series, colour: str) -> str:
    """The series as polylines broken at missing values, with dots on short series."""
    out, run = [], []
    pairs = list(zip(line.xs, line.ys, strict=True))
    for x, y in pairs + [(None, None)]:
        if _finite(y):
            run.append(f"{frame.px(x):.1f},{frame.py(y):.1f}")
            continue
        if len(run) > 1:
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                f'points="{" ".join(run)}"/>'
            )
        if len(pairs) <= MARKERS_UP_TO:
            out.extend(
                f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.6" fill="{colour}"/>'
                for p in run
            )
        run = []
    return f"<g><title>{escape(line.name)}</title>{''.join(out)}</g>"


def _legend(series: list[Series]) -> str:
    """Coloured names in a row under the x axis."""
    out, x = [], LEFT
    for index, line in enumerate(series):
        colour = series_colour(index)
        out.append(
            f'<rect x="{x}" y="{HEIGHT - 16}" width="12" height="4" fill="{colour}"/>'
            f'<text class="legend" x="{x + 16}" y="{HEIGHT - 11}">'
            f"{escape(line.name)}</text>"
        )
        x += 26 + 7 * len(line.name)
    return "".join(out)
