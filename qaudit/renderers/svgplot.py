"""Dependency-free SVG plots for the HTML report: line plots over layer index and histograms.

Hand-written on purpose (docs/html-report.md): no plotting library to install,
a few kilobytes per plot, no script needed to draw, and the output is a pure
function of the numbers, so the same report always gives the same bytes.

Conventions:

* Colours are the Okabe-Ito palette (safe for the common colour-vision
  deficiencies); every series also has its own dash pattern and marker shape,
  so no information is carried by colour alone.
* Every plot is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>``
  summarising its data for screen readers; every point has a tooltip.
* Coordinates are rounded to 0.1 px; numbers in labels, tooltips and
  descriptions follow :mod:`qaudit.renderers.numbers` (``sig``), like every renderer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from qaudit.renderers.numbers import sig

#: Okabe & Ito (2008), "Color Universal Design"; yellow is left out (too light on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "7 4", "2 3", "9 3 2 3")
MARKERS = ("circle", "square", "triangle", "diamond")

WIDTH, HEIGHT = 620, 330
FONT = 12  # px, tick labels and legend
CHAR_W = 6.8  # approximate advance of one character at FONT px, for layout only


@dataclass(frozen=True)
class Series:
    """One line: points ``(x[i], y[i])``, drawn in order; ``tips[i]`` is the tooltip of point i."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = PALETTE[0]
    dash: str = ""
    marker: str = "circle"
    tips: Sequence[str] = ()
    width: float = 2.0  # line width, px
    hollow: bool = False  # outlined markers: an overlaid series drawn on top leaves the one below visible
    #: an error bar per point, ``(x, low, high, tip)`` (calibration trials: min to max), drawn under the line
    bars: Sequence[tuple[float, float, float, str]] = ()


@dataclass(frozen=True)
class VLine:
    """A vertical marker line across a plot (clip points, percentiles)."""

    x: float
    label: str
    color: str
    dash: str = ""


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _c(v: float) -> str:
    """A coordinate: 0.1 px resolution, no trailing '.0', never '-0'."""
    s = f"{v:.1f}"
    if s.endswith(".0"):
        s = s[:-2]
    return "0" if s == "-0" else s


# ---------------------------------------------------------------- scales


class _Linear:
    log = False

    def __init__(self, lo: float, hi: float, n: int = 5):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = 0.0, 1.0
        if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
            pad = abs(lo) * 0.1 if lo else 1.0
            lo, hi = lo - pad, hi + pad
        raw = (hi - lo) / n
        mag = 10.0 ** math.floor(math.log10(raw))
        for m in (1, 2, 2.5, 5, 10):
            step = m * mag
            if step >= raw * (1 - 1e-9):
                break
        self.step = step
        self.lo = math.floor(lo / step + 1e-9) * step
        self.hi = math.ceil(hi / step - 1e-9) * step
        k0 = math.ceil(self.lo / step - 1e-9)
        k1 = math.floor(self.hi / step + 1e-9)
        self.ticks = [k * step for k in range(k0, k1 + 1)]
        self.minor: list[float] = []
        self._dec = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if m == 2.5 else 0))

    def t(self, v: float) -> float:
        return (v - self.lo) / (self.hi - self.lo)

    def label(self, v: float) -> str:
        if abs(v) < self.step * 1e-6:
            return "0"
        big = max(abs(self.lo), abs(self.hi))
        if big >= 1e5 or self.step < 1e-3:
            return sig(v, 3)
        return f"{v:.{self._dec}f}"


class _Log:
    log = True

    def __init__(self, lo: float, hi: float, max_labels: int = 7):
        lo = lo if lo > 0 else 1e-12
        hi = hi if hi > lo else lo * 10
        self.d0 = math.floor(math.log10(lo) + 1e-9)
        self.d1 = math.ceil(math.log10(hi) - 1e-9)
        if self.d1 == self.d0:
            self.d1 += 1
        self.lo, self.hi = 10.0**self.d0, 10.0**self.d1
        every = max(1, math.ceil((self.d1 - self.d0 + 1) / max_labels))
        self.ticks = [10.0**d for d in range(self.d0, self.d1 + 1) if (d - self.d0) % every == 0]
        self.minor = []
        if self.d1 - self.d0 <= 4:
            self.minor = [m * 10.0**d for d in range(self.d0, self.d1) for m in range(2, 10)]

    def t(self, v: float) -> float:
        return (math.log10(v) - self.d0) / (self.d1 - self.d0)

    def label(self, v: float) -> str:
        d = round(math.log10(v))
        if -3 <= d <= 3:
            return format(10.0**d, "f").rstrip("0").rstrip(".") if d < 0 else str(10**d)
        return sig(10.0**d, 1)


def _y_scale(values: Sequence[float], log: bool, fixed: tuple[float, float] | None = None):
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if log:
        return _Log(min(vals, default=1e-3), max(vals, default=1.0))
    lo, hi = min(vals, default=0.0), max(vals, default=1.0)
    if fixed is not None:  # e.g. a fraction: always show [0, 1]
        scale = _Linear(min(lo, fixed[0]), max(hi, fixed[1]))
        if fixed[1] > fixed[0] and fixed[1] <= hi <= fixed[1] * 1.1:  # just above 1: do not jump to 1.25
            scale.hi = hi
            scale.ticks = [t for t in scale.ticks if t <= hi + 1e-12]
        return scale
    pad = 0.06 * (hi - lo)
    # a non-negative quantity (range, error) never gets a negative axis
    return _Linear(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)


# ---------------------------------------------------------------- drawing helpers


def _marker(shape: str, x: float, y: float, r: float, color: str, tip: str | None, hollow: bool = False) -> str:
    if shape == "square":
        el = f'<rect x="{_c(x - r)}" y="{_c(y - r)}" width="{_c(2 * r)}" height="{_c(2 * r)}"'
    elif shape == "triangle":
        el = f'<path d="M{_c(x)} {_c(y - 1.2 * r)}L{_c(x + 1.1 * r)} {_c(y + 0.8 * r)}H{_c(x - 1.1 * r)}Z"'
    elif shape == "diamond":
        el = f'<path d="M{_c(x)} {_c(y - 1.3 * r)}L{_c(x + 1.3 * r)} {_c(y)}L{_c(x)} {_c(y + 1.3 * r)}L{_c(x - 1.3 * r)} {_c(y)}Z"'
    else:
        el = f'<circle cx="{_c(x)}" cy="{_c(y)}" r="{_c(r)}"'
    el += f' fill="#ffffff" stroke="{color}" stroke-width="1.5"' if hollow else f' fill="{color}"'
    return el + (f"><title>{escape(tip)}</title></{el.split()[0][1:]}>" if tip else "/>")


def _legend_rows(entries: list, width: float) -> list[list]:
    rows, cur, used = [], [], 0.0
    for e in entries:
        w = (34 if e[0] != "note" else 0) + CHAR_W * len(e[1]) + 18
        if cur and used + w > width:
            rows.append(cur)
            cur, used = [], 0.0
        cur.append((e, w))
        used += w
    if cur:
        rows.append(cur)
    return rows


def _legend_svg(rows: list[list], x0: float, y0: float) -> str:
    out = ['<g class="legend">']
    for i, row in enumerate(rows):
        x, y = x0, y0 + 18 * i
        for (kind, label, color, dash, marker, hollow), w in row:
            if kind == "note":
                out.append(f'<text x="{_c(x)}" y="{_c(y + 4)}" class="note">{escape(label)}</text>')
            else:
                d = f' stroke-dasharray="{dash}"' if dash else ""
                if kind == "bar":
                    out.append(
                        f'<rect x="{_c(x)}" y="{_c(y - 5)}" width="26" height="10" fill="{color}" fill-opacity="0.55"/>'
                    )
                elif kind == "rug":
                    out.append(
                        f'<path d="M{_c(x + 2)} {_c(y - 5)}v10m5 -10v10m5 -10v10m5 -10v10m5 -10v10" stroke="{color}"/>'
                    )
                else:
                    out.append(
                        f'<line x1="{_c(x)}" y1="{_c(y)}" x2="{_c(x + 26)}" y2="{_c(y)}" stroke="{color}" stroke-width="2"{d}/>'
                    )
                    if marker:
                        out.append(_marker(marker, x + 13, y, 3.5, color, None, hollow))
                out.append(f'<text x="{_c(x + 32)}" y="{_c(y + 4)}">{escape(label)}</text>')
            x += w
    out.append("</g>")
    return "".join(out)


def _frame(
    pid: str,
    title: str,
    desc: str,
    xlabel: str,
    ylabel: str,
    xs,
    ys,
    legend: list,
    body_fn,
    width: int,
    height: int,
) -> str:
    """Title, legend, axes, grid and tick labels around the marks drawn by ``body_fn(sx, sy)``."""
    left, right, bottom = 66, 18, 46
    rows = _legend_rows(legend, width - left - right)
    top = 34 + 18 * len(rows) + (6 if rows else 0)
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + xs.t(v) * pw

    def sy(v: float) -> float:
        return top + (1 - ys.t(v)) * ph

    out = [
        f'<svg class="plot" id="{pid}" role="img" aria-labelledby="{pid}-t {pid}-d" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="{FONT}">',
        f'<title id="{pid}-t">{escape(title)}</title><desc id="{pid}-d">{escape(desc)}</desc>',
        f'<text x="{left}" y="20" class="ptitle">{escape(title)}</text>',
        _legend_svg(rows, left, 40) if rows else "",
        '<g class="grid">',
    ]
    for v in ys.minor:
        if ys.lo < v < ys.hi:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_c(sy(v))}" y2="{_c(sy(v))}" class="minor"/>')
    for v in ys.ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_c(sy(v))}" y2="{_c(sy(v))}"/>')
    for v in xs.ticks:
        out.append(f'<line x1="{_c(sx(v))}" x2="{_c(sx(v))}" y1="{top}" y2="{top + ph}"/>')
    out.append("</g>")
    out.append(f'<g class="marks">{body_fn(sx, sy)}</g>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="axes"/>')
    out.append('<g class="ticks">')
    for v in ys.ticks:
        out.append(f'<text x="{left - 6}" y="{_c(sy(v) + 4)}" text-anchor="end">{escape(ys.label(v))}</text>')
    for v in xs.ticks:
        out.append(f'<text x="{_c(sx(v))}" y="{top + ph + 16}" text-anchor="middle">{escape(xs.label(v))}</text>')
    out.append("</g>")
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" class="alabel">{escape(xlabel)}</text>'
    )
    cy = top + ph / 2
    out.append(
        f'<text transform="translate(15 {cy:.1f}) rotate(-90)" text-anchor="middle" class="alabel">{escape(ylabel)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def _int_axis(lo: float, hi: float) -> _Linear:
    """Layer indices: integer ticks (step 1, 2, 5, 10, 20, ...), at most about 12 of them."""
    s = _Linear(lo, hi + 1)
    span = max(hi - lo, 1)
    step, k = 1, 0
    while span / step > 12:
        k += 1
        step = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    s.step = step
    s.lo, s.hi = lo - 0.5, hi + 0.5
    first = math.ceil(lo / step) * step
    s.ticks = list(range(int(first), int(hi) + 1, step))
    s.minor = []
    s._dec = 0
    return s


# ---------------------------------------------------------------- plots


def line_plot(
    pid: str,
    title: str,
    xlabel: str,
    ylabel: str,
    series: Sequence[Series],
    *,
    log_y: bool = False,
    y_fixed: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    notes: Sequence[str] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Lines with markers over an integer x axis (layer index). Non-finite y values must be filtered out."""
    all_x = [x for s in series for x in s.x]
    all_y = [y for s in series for y in s.y] + [v for s in series for _, lo, hi, _ in s.bars for v in (lo, hi)]
    x0, x1 = x_range if x_range else (min(all_x, default=0), max(all_x, default=1))
    xs = _int_axis(x0, x1)
    ys = _y_scale(all_y, log_y, y_fixed)
    legend = [("line", s.label, s.color, s.dash, s.marker, s.hollow) for s in series]
    legend += [("note", n, "", "", "", False) for n in notes]
    many = len(all_x) > 40 * max(1, len(series))
    r = 2.4 if many else 3.4

    def body(sx, sy):
        out = []
        for s in series:
            if not s.x:
                continue
            for x, lo, hi, tip in s.bars:  # a vertical bar with caps, under the line and markers
                cx, w = sx(x), 3.0
                out.append(
                    f'<path class="bar" d="M{_c(cx)} {_c(sy(lo))}V{_c(sy(hi))}M{_c(cx - w)} {_c(sy(lo))}H{_c(cx + w)}'
                    f'M{_c(cx - w)} {_c(sy(hi))}H{_c(cx + w)}" stroke="{s.color}" stroke-opacity="0.6" fill="none">'
                    f"<title>{escape(tip)}</title></path>"
                )
            d = "".join(("M" if i == 0 else "L") + f"{_c(sx(x))} {_c(sy(y))}" for i, (x, y) in enumerate(zip(s.x, s.y)))
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            width = f' stroke-width="{s.width:g}"' if s.width != 2.0 else ""
            out.append(f'<g class="series"><path class="line" d="{d}" stroke="{s.color}"{width}{dash}/>')
            tips = list(s.tips) or [f"{x}: {sig(y)}" for x, y in zip(s.x, s.y)]
            for x, y, tip in zip(s.x, s.y, tips):
                out.append(_marker(s.marker, sx(x), sy(y), r, s.color, f"{s.label} — {tip}", s.hollow))
            out.append("</g>")
        return "".join(out)

    parts = []
    for s in series:
        if s.y:
            i_lo = min(range(len(s.y)), key=lambda i: s.y[i])
            i_hi = max(range(len(s.y)), key=lambda i: s.y[i])
            parts.append(
                f"{s.label}: {len(s.y)} layers, lowest {sig(s.y[i_lo])} at layer {s.x[i_lo]}, "
                f"highest {sig(s.y[i_hi])} at layer {s.x[i_hi]}"
                + (f", with error bars on {len(s.bars)} layers" if s.bars else "")
            )
        else:
            parts.append(f"{s.label}: no data")
    desc = f"Line plot over {xlabel}; y: {ylabel}. " + "; ".join(parts + list(notes)) + "."
    return _frame(pid, title, desc, xlabel, ylabel, xs, ys, legend, body, width, height)


def histogram_plot(
    pid: str,
    title: str,
    xlabel: str,
    lo: float,
    hi: float,
    counts: Sequence[int],
    *,
    color: str = PALETTE[0],
    vlines: Sequence[VLine] = (),
    grid: Sequence[float] = (),
    grid_label: str = "",
    notes: Sequence[str] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Counts in equal bins on ``[lo, hi]`` (log count axis), vertical marker lines, and a rug of grid points."""
    n = max(len(counts), 1)
    w = (hi - lo) / n
    edges_x = [lo, hi] + [v.x for v in vlines] + ([min(grid), max(grid)] if grid else [])
    x_lo, x_hi = min(edges_x), max(edges_x)
    pad = 0.03 * (x_hi - x_lo) if x_hi > x_lo else max(abs(x_lo), 1.0) * 0.05
    xs = _Linear(x_lo - pad, x_hi + pad, n=6)
    xs.lo, xs.hi = x_lo - pad, x_hi + pad
    xs.ticks = [t for t in xs.ticks if xs.lo <= t <= xs.hi]
    peak = max(counts, default=1) or 1
    ys = _Log(1, peak * 1.5)
    ys.lo, ys.d0 = 10**-0.5, -0.5  # count 1 gets a visible bar
    ys.ticks = [t for t in ys.ticks if t >= 1]
    ys.minor = [m for m in ys.minor if m >= 1]
    legend = [("bar", "fp32 values", color, "", "", False)]
    for v in vlines:  # a pair of lines (q_min / q_max) shares one legend entry
        if not any(e[1] == v.label for e in legend):
            legend.append(("line", v.label, v.color, v.dash, "", False))
    grid_shown: list[float] = []
    if grid:
        span = xs.hi - xs.lo
        px = (width - 84) * (grid[1] - grid[0]) / span if len(grid) > 1 else 10
        every = max(1, math.ceil(3.0 / px)) if px > 0 else 1
        grid_shown = list(grid[::every])
        if grid[-1] not in grid_shown:
            grid_shown.append(grid[-1])
        label = grid_label + (f" (every {_ordinal(every)} level shown)" if every > 1 else "")
        legend.append(("rug", label, "#555555", "", "", False))
    legend += [("note", t, "", "", "", False) for t in notes]

    def body(sx, sy):
        base = sy(ys.lo)
        bars = []
        for i, c in enumerate(counts):
            if c <= 0:
                continue
            a, b = (lo + i * w, lo + (i + 1) * w) if w > 0 else (lo - pad / 4, lo + pad / 4)
            x0, x1 = sx(a), max(sx(b), sx(a) + 0.8)
            top = sy(c)
            bars.append(f"M{_c(x0)} {_c(base)}V{_c(top)}H{_c(x1)}V{_c(base)}Z")
        out = [
            f'<path class="bars" d="{"".join(bars)}" fill="{color}" fill-opacity="0.55" stroke="{color}" stroke-width="0.5"/>'
        ]
        for v in vlines:
            dash = f' stroke-dasharray="{v.dash}"' if v.dash else ""
            out.append(
                f'<line class="vline" x1="{_c(sx(v.x))}" x2="{_c(sx(v.x))}" y1="{_c(sy(ys.hi))}" y2="{_c(base)}" '
                f'stroke="{v.color}" stroke-width="2"{dash}><title>{escape(v.label)}: {sig(v.x, 4)}</title></line>'
            )
        if grid_shown:
            d = "".join(f"M{_c(sx(g))} {_c(base)}v-7" for g in grid_shown)
            out.append(f'<path class="rug" d="{d}" stroke="#555555" stroke-width="0.8"/>')
        return "".join(out)

    total = sum(counts)
    desc = (
        f"Histogram of {total} fp32 values in {len(counts)} bins from {sig(lo, 4)} to {sig(hi, 4)}, count on a log10 axis; "
        + "; ".join(f"{v.label} at {sig(v.x, 4)}" for v in vlines)
        + (f"; {len(grid)} quantization levels from {sig(grid[0], 4)} to {sig(grid[-1], 4)}" if grid else "")
        + "."
    )
    return _frame(pid, title, desc, xlabel, "count (log10 scale)", xs, ys, legend, body, width, height)
