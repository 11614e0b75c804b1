"""Charts as inline SVG strings, drawn server-side: no JavaScript, no CDN, no fonts to fetch.

Every chart is a pure function of plain numbers -> ``<svg class="chart" data-chart="KIND">...</svg>``,
so the page renders the same in a browser, in a static HTML file, and in a test reading the DOM. Text
is escaped here (labels come from model and feature names, which are user data).

* :func:`bar_chart` -- horizontal grouped bars (latency per stage, metrics per model version, counts).
* :func:`interval_chart` -- a forest plot: point estimate, fixed-horizon CI (thick) and the always-valid
  confidence sequence (thin, wider) per row, around a zero line (experiment lifts).
* :func:`band_chart` -- a line with a shaded band over x (the sequential boundary across looks).
* :func:`histogram_pair` -- two small histograms side by side (reference vs current for drift).
* :func:`heat_color` -- a white -> amber -> red ramp (the drift table's PSI cells).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

PALETTE = ("#2563eb", "#f97316", "#16a34a", "#9333ea", "#0891b2", "#dc2626", "#ca8a04", "#64748b")
INK = "#1e293b"
MUTED = "#64748b"
GRID = "#e2e8f0"
CI_COLOR = "#2563eb"
CS_COLOR = "#93c5fd"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif"


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, inf, or not a number)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: Any, digits: int = 3) -> str:
    """Compact human number: 0.0123 -> '0.0123', 12345 -> '12,345', None -> '–'."""
    x = _num(value)
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _svg(width: float, height: float, kind: str, body: list[str], title: str = "") -> str:
    label = f' aria-label="{escape(title)}"' if title else ""
    return (
        f'<svg class="chart" data-chart="{kind}" role="img"{label} xmlns="http://www.w3.org/2000/svg" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" style="{FONT}">'
        + "".join(body)
        + "</svg>"
    )


def _text(
    x: float,
    y: float,
    s: str,
    *,
    size: int = 12,
    anchor: str = "start",
    fill: str = INK,
    weight: str = "normal",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
        f'font-weight="{weight}">{escape(s)}</text>'
    )


def _nice_max(value: float) -> float:
    """Round an axis maximum up to 1, 2 or 5 x 10^k so the tick labels are readable."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    step = _nice_max(span / n)
    start = math.ceil(lo / step) * step
    out, t = [], start
    while t <= hi + 1e-12 * max(1.0, abs(hi)):
        out.append(round(t, 12))
        t += step
    return out


# ---------------------------------------------------------------------------------------------------
# Bars


def bar_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[Any]],
    *,
    unit: str = "",
    width: int = 520,
    bar_height: int = 14,
    colors: Sequence[str] | None = None,
    title: str = "",
    log_hint: bool = False,
) -> str:
    """Horizontal grouped bars: one group per label, one bar per series (legend on top).

    Missing values (None/NaN) draw no bar and print '–'. ``log_hint`` only prints '(log scale)': it is
    used when values span decades, and then the bars are drawn on log10 so a 0.3 ms stage stays visible
    next to a 40 ms one.
    """
    names = list(series)
    colors = list(colors or PALETTE)
    n_rows, n_series = len(labels), max(len(names), 1)
    label_w = min(190, 12 + 7 * max((len(str(lab)) for lab in labels), default=4))
    value_w = 64
    plot_w = max(width - label_w - value_w - 10, 80)
    legend_h = 22 if len(names) > 1 or title else 6
    group_h = n_series * bar_height + 10
    height = legend_h + n_rows * group_h + 22
    values = [[_num(v) for v in series[name]] for name in names]
    finite = [v for row in values for v in row if v is not None and v > 0]
    use_log = log_hint and finite and max(finite) / max(min(finite), 1e-12) > 50
    if use_log:
        lo_v = min(finite) / 2
        hi_v = max(finite)

        def scale(v: float) -> float:
            if v <= lo_v:
                return 0.0
            return plot_w * (math.log10(v) - math.log10(lo_v)) / (math.log10(hi_v) - math.log10(lo_v))
    else:
        hi_v = _nice_max(max(finite, default=1.0))

        def scale(v: float) -> float:
            return plot_w * max(v, 0.0) / hi_v

    body: list[str] = []
    x0 = label_w
    # legend
    lx = x0
    if title:
        body.append(_text(0, 14, title, size=12, weight="600"))
        lx = max(x0, 10 + 7 * len(title))
    if len(names) > 1:
        for i, name in enumerate(names):
            color = colors[i % len(colors)]
            body.append(f'<rect x="{lx:.1f}" y="5" width="10" height="10" rx="2" fill="{color}"/>')
            body.append(_text(lx + 14, 14, name, size=11, fill=MUTED))
            lx += 24 + 7 * len(name)
    top = legend_h
    bottom = top + n_rows * group_h
    # grid (linear only: log ticks would need their own labels, the values are printed anyway)
    if not use_log:
        for t in _ticks(0, hi_v, 4):
            gx = x0 + scale(t)
            body.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{bottom}" stroke="{GRID}"/>')
            body.append(_text(gx, bottom + 14, fmt(t) + unit, size=10, anchor="middle", fill=MUTED))
    else:
        body.append(_text(x0, bottom + 14, "(log scale)", size=10, fill=MUTED))
    for r, label in enumerate(labels):
        gy = top + r * group_h + 5
        body.append(_text(label_w - 8, gy + n_series * bar_height / 2 + 4, str(label), size=12, anchor="end"))
        for s, _name in enumerate(names):
            v = values[s][r] if r < len(values[s]) else None
            y = gy + s * bar_height
            if v is None:
                body.append(_text(x0 + 4, y + bar_height - 3, "–", size=11, fill=MUTED))
                continue
            w = max(scale(v), 1.5)
            color = colors[s % len(colors)]
            body.append(
                f'<rect class="bar" x="{x0}" y="{y:.1f}" width="{w:.1f}" height="{bar_height - 2}" rx="2" '
                f'fill="{color}"><title>{escape(f"{label} · {_name}: {fmt(v)}{unit}")}</title></rect>'
            )
            body.append(_text(x0 + w + 4, y + bar_height - 4, fmt(v) + unit, size=10, fill=MUTED))
    body.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{bottom}" stroke="{MUTED}"/>')
    return _svg(width, height, "bar", body, title)


# ---------------------------------------------------------------------------------------------------
# Intervals


def interval_chart(
    rows: Sequence[Mapping[str, Any]],
    *,
    percent: bool = True,
    width: int = 560,
    title: str = "",
) -> str:
    """Forest plot. Each row: ``label, estimate, low, high`` (fixed-horizon CI) and optionally
    ``seq_low, seq_high`` (confidence sequence) and ``color`` (the point's colour: win/loss/neutral).

    The x axis is symmetric around 0 when the data allow, so the eye reads the sign at once.
    """
    scale_k = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    label_w = min(220, 12 + 7 * max((len(str(r.get("label", ""))) for r in rows), default=4))
    value_w = 120
    plot_w = max(width - label_w - value_w, 100)
    row_h = 30
    top, height = 24, 24 + row_h * len(rows) + 24
    extent = [0.0]
    for r in rows:
        for key in ("low", "high", "seq_low", "seq_high", "estimate"):
            v = _num(r.get(key))
            if v is not None:
                extent.append(v * scale_k)
    lo, hi = min(extent), max(extent)
    m = _nice_max(max(abs(lo), abs(hi)) * 1.05)
    # Symmetric unless one side is tiny compared with the other (then the zero line sits near an edge).
    lo = -m if lo < 0 or hi < m / 3 else -m / 4
    hi = m if hi > 0 or lo > -m / 3 else m / 4
    lo, hi = min(lo, -m / 4), max(hi, m / 4)

    def sx(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    body: list[str] = []
    if title:
        body.append(_text(0, 14, title, size=12, weight="600"))
    # legend
    lx = label_w + plot_w - 210
    body.append(f'<line x1="{lx}" y1="10" x2="{lx + 18}" y2="10" stroke="{CI_COLOR}" stroke-width="5"/>')
    body.append(_text(lx + 22, 14, "95% CI", size=10, fill=MUTED))
    lx += 70
    body.append(f'<line x1="{lx}" y1="10" x2="{lx + 18}" y2="10" stroke="{CS_COLOR}" stroke-width="2"/>')
    body.append(_text(lx + 22, 14, "always-valid sequence", size=10, fill=MUTED))
    bottom = top + row_h * len(rows)
    for t in _ticks(lo, hi, 6):
        gx = sx(t)
        body.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{bottom}" stroke="{GRID}"/>')
        body.append(_text(gx, bottom + 14, f"{fmt(t, 2)}{unit}", size=10, anchor="middle", fill=MUTED))
    zx = sx(0.0)
    body.append(
        f'<line x1="{zx:.1f}" y1="{top - 4}" x2="{zx:.1f}" y2="{bottom}" stroke="{INK}" '
        f'stroke-dasharray="3,3"/>'
    )
    for i, r in enumerate(rows):
        cy = top + i * row_h + row_h / 2
        body.append(_text(label_w - 8, cy + 4, str(r.get("label", "")), size=12, anchor="end"))
        est = _num(r.get("estimate"))
        color = r.get("color", CI_COLOR)
        s_lo, s_hi = _num(r.get("seq_low")), _num(r.get("seq_high"))
        if s_lo is not None and s_hi is not None:
            x1, x2 = sx(max(s_lo * scale_k, lo)), sx(min(s_hi * scale_k, hi))
            body.append(
                f'<line class="cs" x1="{x1:.1f}" y1="{cy:.1f}" x2="{x2:.1f}" y2="{cy:.1f}" stroke="{CS_COLOR}" '
                f'stroke-width="2"/>'
                f'<line x1="{x1:.1f}" y1="{cy - 6:.1f}" x2="{x1:.1f}" y2="{cy + 6:.1f}" stroke="{CS_COLOR}" '
                f'stroke-width="2"/>'
                f'<line x1="{x2:.1f}" y1="{cy - 6:.1f}" x2="{x2:.1f}" y2="{cy + 6:.1f}" stroke="{CS_COLOR}" '
                f'stroke-width="2"/>'
            )
        c_lo, c_hi = _num(r.get("low")), _num(r.get("high"))
        if c_lo is not None and c_hi is not None:
            x1, x2 = sx(max(c_lo * scale_k, lo)), sx(min(c_hi * scale_k, hi))
            body.append(
                f'<line class="ci" x1="{x1:.1f}" y1="{cy:.1f}" x2="{x2:.1f}" y2="{cy:.1f}" stroke="{color}" '
                f'stroke-width="6" stroke-linecap="round" opacity="0.85"/>'
            )
        if est is not None:
            tip = (
                f"{r.get('label', '')}: {fmt(est * scale_k, 3)}{unit} "
                f"[{fmt(_num(r.get('low')) and r['low'] * scale_k, 3)}, "
                f"{fmt(_num(r.get('high')) and r['high'] * scale_k, 3)}]"
            )
            body.append(
                f'<circle class="point" cx="{sx(est * scale_k):.1f}" cy="{cy:.1f}" r="5" fill="#fff" '
                f'stroke="{color}" stroke-width="2.5"><title>{escape(tip)}</title></circle>'
            )
            body.append(
                _text(
                    label_w + plot_w + 8,
                    cy + 4,
                    f"{est * scale_k:+.2f}{unit}",
                    size=12,
                    fill=color,
                    weight="600",
                )
            )
    return _svg(width, height, "interval", body, title)


def band_chart(
    x: Sequence[Any],
    y: Sequence[Any],
    low: Sequence[Any],
    high: Sequence[Any],
    *,
    percent: bool = True,
    width: int = 560,
    height: int = 170,
    title: str = "",
    x_label: str = "units exposed",
) -> str:
    """A line (the estimate) inside a shaded band (the confidence sequence) over ``x``, with a zero line:
    the sequential view of an experiment -- the band narrowing look after look until it leaves 0."""
    k = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    pts = [(_num(a), _num(b), _num(c), _num(d)) for a, b, c, d in zip(x, y, low, high, strict=False)]
    pts = [(a, b * k, c * k, d * k) for a, b, c, d in pts if None not in (a, b, c, d)]  # type: ignore[operator]
    body: list[str] = []
    if title:
        body.append(_text(0, 14, title, size=12, weight="600"))
    if not pts:
        body.append(_text(width / 2, height / 2, "no looks yet", anchor="middle", fill=MUTED))
        return _svg(width, height, "band", body, title)
    left, right, top, bottom = 58, width - 26, 24, height - 28
    xs = [p[0] for p in pts]
    ys = [v for p in pts for v in p[1:]] + [0.0]
    # Early looks have huge sequences; clip the axis at 4x the last look's half-width so the story stays legible.
    last_half = max(abs(pts[-1][3] - pts[-1][2]) / 2, 1e-9)
    y_lo = max(min(ys), pts[-1][1] - 4 * last_half, -abs(pts[-1][1]) - 4 * last_half)
    y_hi = min(max(ys), pts[-1][1] + 4 * last_half, abs(pts[-1][1]) + 4 * last_half)
    y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 0.0)
    pad = (y_hi - y_lo) * 0.08 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_lo, x_hi = min(xs), max(xs)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def sx(v: float) -> float:
        return left + (right - left) * (v - x_lo) / (x_hi - x_lo)

    def sy(v: float) -> float:
        v = min(max(v, y_lo), y_hi)
        return bottom - (bottom - top) * (v - y_lo) / (y_hi - y_lo)

    for t in _ticks(y_lo, y_hi, 4):
        gy = sy(t)
        body.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{right}" y2="{gy:.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, gy + 4, f"{fmt(t, 2)}{unit}", size=10, anchor="end", fill=MUTED))
    for t in _ticks(x_lo, x_hi, 5):
        body.append(_text(sx(t), bottom + 14, fmt(t), size=10, anchor="middle", fill=MUTED))
    body.append(_text(right, bottom + 26, x_label, size=10, anchor="end", fill=MUTED))
    band = [f"{sx(a):.1f},{sy(d):.1f}" for a, _b, _c, d in pts] + [
        f"{sx(a):.1f},{sy(c):.1f}" for a, _b, c, _d in reversed(pts)
    ]
    body.append(f'<polygon class="band" points="{" ".join(band)}" fill="{CS_COLOR}" opacity="0.55"/>')
    body.append(
        f'<line x1="{left}" y1="{sy(0):.1f}" x2="{right}" y2="{sy(0):.1f}" stroke="{INK}" '
        f'stroke-dasharray="3,3"/>'
    )
    line = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b, _c, _d in pts)
    body.append(
        f'<polyline class="line" points="{line}" fill="none" stroke="{CI_COLOR}" stroke-width="2.5"/>'
    )
    for a, b, c, d in pts:
        body.append(
            f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="3" fill="{CI_COLOR}"><title>'
            f"{escape(f'n={fmt(a)}: {b:+.2f}{unit} [{c:+.2f}, {d:+.2f}]')}</title></circle>"
        )
    return _svg(width, height, "band", body, title)


# ---------------------------------------------------------------------------------------------------
# Drift


def heat_color(value: Any, low: float = 0.0, mid: float = 0.1, high: float = 0.25) -> str:
    """Background colour for a PSI cell: green-white below ``mid``, amber up to ``high``, red above.

    The breakpoints default to the PSI bands (0.1, 0.25) so the colour and the band label agree.
    """
    v = _num(value)
    if v is None:
        return "#f1f5f9"

    def mix(c1: tuple[int, int, int], c2: tuple[int, int, int], t: float) -> str:
        t = min(max(t, 0.0), 1.0)
        r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c1, c2, strict=True))
        return f"#{r:02x}{g:02x}{b:02x}"

    green, amber, red, deep = (220, 252, 231), (254, 215, 170), (252, 165, 165), (239, 68, 68)
    if v < mid:
        return mix(green, (254, 249, 195), (v - low) / (mid - low))
    if v <= high:
        return mix(amber, red, (v - mid) / (high - mid))
    return mix(red, deep, (v - high) / high)


def histogram_pair(
    reference: Sequence[Any], current: Sequence[Any], *, width: int = 150, height: int = 34
) -> str:
    """Reference (grey) and current (blue) shares per bin, interleaved: the shape of a drift."""
    ref = [_num(v) or 0.0 for v in reference]
    cur = [_num(v) or 0.0 for v in current]
    n = max(len(ref), len(cur), 1)
    top = max(ref + cur + [1e-9])
    slot = width / n
    w = max(slot / 2 - 0.5, 0.8)
    body = []
    for i in range(n):
        for j, (vals, color) in enumerate(((ref, "#94a3b8"), (cur, CI_COLOR))):
            v = vals[i] if i < len(vals) else 0.0
            h = (height - 2) * v / top
            body.append(
                f'<rect x="{i * slot + j * w:.1f}" y="{height - h:.1f}" width="{w:.1f}" height="{h:.1f}" '
                f'fill="{color}"/>'
            )
    return _svg(width, height, "histogram", body)
