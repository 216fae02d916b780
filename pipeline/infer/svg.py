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
MAX_TICKS = 12  # the most ticks an axis gets, whatever the numbers
TICK_SLACK = 1e-9  # in steps: a bound this close to a tick is on it (float noise)


@dataclass
class Series:
    """One line: y values (None = missing) at x positions."""

    name: str
    xs: list[float]
    ys: list[float | None]


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values covering [low, high] (whole numbers if `integer`).

    Never more than MAX_TICKS: a flat span gives its one value, and a span that round steps
    cannot cover (below float resolution, or near the float limit) evenly spaced values.
    """
    if not (_finite(low) and _finite(high)):
        return [0.0]
    low, high = float(low), float(high)
    if high <= low:
        return [low]
    raw = high / max(count - 1, 1) - low / max(count - 1, 1)  # no overflow near the limit
    step = _round_step(raw)
    if not math.isfinite(step):
        return even_ticks(low, high, count)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.floor(low / step + TICK_SLACK)
    last = math.ceil(high / step - TICK_SLACK)
    ticks = [_tidy(i * step) for i in range(first, last + 1)] if last - first < MAX_TICKS else []
    if len(ticks) < 2 or len(set(ticks)) != len(ticks) or not all(map(math.isfinite, ticks)):
        return even_ticks(low, high, count)
    return ticks


def even_ticks(low: float, high: float, count: int) -> list[float]:
    """`count` evenly spaced values from low to high (fewer if float resolution merges some)."""
    fractions = [i / max(count - 1, 1) for i in range(count)]
    return sorted({low * (1 - f) + high * f for f in fractions})


def _round_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at least `raw` (inf when there is none)."""
    if not 0 < raw < math.inf:
        return math.inf
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), math.inf)


def _tidy(value: float) -> float:
    """`value` without float noise (0.30000000000000004 -> 0.3), at any magnitude."""
    return float(f"{value:.12g}")


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
    points = [
        (float(x), float(y))
        for s in series
        for x, y in zip(s.xs, s.ys, strict=True)
        if _finite(x) and _finite(y)
    ]
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
    if _finite(marker_x):
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
        return LEFT + _fraction(x, self.x0, self.x1) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - _fraction(y, self.y0, self.y1) * (HEIGHT - TOP - BOTTOM)


def _fraction(value: float, low: float, high: float) -> float:
    """Where `value` lies between low (0) and high (1); 0.5 on a flat span. Halved first, so
    that no difference overflows near the float limit."""
    span = high / 2 - low / 2
    return (value / 2 - low / 2) / span if span > 0 else 0.5


def _finite(value) -> bool:
    """A real number that is a finite float (an int too large for a float is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
        if _finite(x) and _finite(y):
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
