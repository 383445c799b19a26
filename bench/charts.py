"""SVG charts for the benchmark report, in plain Python (no plotting library).

bench/run calls `render` after a run; `bench/run --plots-only` calls it on a
saved bench/out/results.json. Each chart is one self-contained SVG file with
its numbers printed on it, so it reads the same in a browser, on a forge, or
as text.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

WIDTH = 760
LABEL_W = 300
ROW_H = 24
TOP = 44
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
# Reference servers, Weir, Weir with tracing.
COLOURS = {"ref": "#8c8c8c", "weir": "#2b6cb0", "trace": "#dd6b20", "other": "#4a5568"}
LAT_COLOURS = [("p50", "#2b6cb0"), ("p99", "#dd6b20"), ("p99.9", "#c53030")]


def kind(name: str) -> str:
    if name.startswith("weir-trace"):
        return "trace"
    if name.startswith("weir"):
        return "weir"
    if name in ("nginx", "haproxy", "nginx-chain"):
        return "ref"
    return "other"


def fmt(v: float) -> str:
    if v != v:
        return "–"
    return f"{v:,.0f}" if v >= 10 else f"{v:,.1f}"


def _svg(height: int, title: str, body: list[str]) -> str:
    return "\n".join([
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
        f"viewBox='0 0 {WIDTH} {height}' {FONT} font-size='12'>",
        f"<rect width='{WIDTH}' height='{height}' fill='white'/>",
        f"<text x='10' y='22' font-size='15' font-weight='bold'>{escape(title)}</text>",
        *body,
        "</svg>",
    ]) + "\n"


def bars(title: str, unit: str, rows: list[tuple[str, str, float]]) -> str:
    """Horizontal bars, one per (case name, label, value); NaN rows show a dash."""
    plot_w = WIDTH - LABEL_W - 90
    top = max((v for _, _, v in rows if v == v), default=1.0) or 1.0
    body = [f"<text x='{WIDTH - 10}' y='22' text-anchor='end' fill='#555'>{escape(unit)}</text>"]
    for i, (name, label, v) in enumerate(rows):
        y = TOP + i * ROW_H
        body.append(f"<text x='{LABEL_W - 8}' y='{y + 15}' text-anchor='end'>"
                    f"{escape(label)}</text>")
        w = 0 if v != v else max(1.0, plot_w * v / top)
        body.append(f"<rect x='{LABEL_W}' y='{y + 3}' width='{w:.1f}' height='{ROW_H - 6}' "
                    f"fill='{COLOURS[kind(name)]}'><title>{escape(label)}: {fmt(v)} "
                    f"{escape(unit)}</title></rect>")
        body.append(f"<text x='{LABEL_W + w + 6:.1f}' y='{y + 15}'>{fmt(v)}</text>")
    return _svg(TOP + len(rows) * ROW_H + 12, title, body)


def latency(title: str, rows: list[tuple[str, str, dict]]) -> str:
    """p50/p99/p99.9 per case on a log scale (they span two or three decades)."""
    plot_w = WIDTH - LABEL_W - 70
    vals = [v for _, _, d in rows for v in d.values()
            if isinstance(v, (int, float)) and v == v and v > 0]
    if not vals:
        vals = [1.0]
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals) * 1.01))
    span = math.log10(hi) - math.log10(lo) or 1.0

    def x(v: float) -> float:
        return LABEL_W + plot_w * (math.log10(v) - math.log10(lo)) / span

    group = ROW_H + 18
    height = TOP + len(rows) * group + 40
    body = []
    decade = lo
    while decade <= hi:
        gx = x(decade)
        body.append(f"<line x1='{gx:.1f}' y1='{TOP - 4}' x2='{gx:.1f}' y2='{height - 30}' "
                    "stroke='#ddd'/>")
        body.append(f"<text x='{gx:.1f}' y='{height - 16}' text-anchor='middle' fill='#555'>"
                    f"{fmt(decade)} µs</text>")
        decade *= 10
    for j, (key, colour) in enumerate(LAT_COLOURS):
        lx = WIDTH - 230 + j * 75
        body.append(f"<rect x='{lx}' y='12' width='12' height='12' fill='{colour}'/>")
        body.append(f"<text x='{lx + 16}' y='22'>{key}</text>")
    for i, (_name, label, d) in enumerate(rows):
        y = TOP + i * group
        body.append(f"<text x='{LABEL_W - 8}' y='{y + 20}' text-anchor='end'>"
                    f"{escape(label)}</text>")
        if "note" in d:
            body.append(f"<text x='{LABEL_W + 4}' y='{y + 20}' fill='#555'>"
                        f"{escape(str(d['note']))}</text>")
            continue
        for j, (key, colour) in enumerate(LAT_COLOURS):
            v = d.get(key, float("nan"))
            if v != v or v <= 0:
                continue
            by = y + 3 + j * (group - 12) / 3
            w = max(1.0, x(v) - LABEL_W)
            body.append(f"<rect x='{LABEL_W}' y='{by:.1f}' width='{w:.1f}' "
                        f"height='{(group - 14) / 3:.1f}' fill='{colour}'><title>{escape(label)} "
                        f"{key}: {fmt(v)} µs</title></rect>")
            body.append(f"<text x='{LABEL_W + w + 4:.1f}' y='{by + 9:.1f}' font-size='10'>"
                        f"{fmt(v)}</text>")
    return _svg(height, title, body)


def median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def render(cases: list[tuple[str, str, dict]], outdir: Path,
           harness_late_us: float = 1000) -> dict[str, Path]:
    """Writes the charts for `cases` (name, label, results by variant, as in
    results.json) into `outdir`; returns chart name -> file."""
    outdir.mkdir(parents=True, exist_ok=True)

    def m(res: dict, variant: str, key: str) -> float:
        return median([r.get(key, float("nan")) for r in res.get(variant, [])])

    def lat(res: dict) -> dict:
        # As in the report's table: an overloaded run measured its queue, a
        # saturated harness measured itself; neither is the server's latency.
        runs = res.get("lat", [])
        sent = sum(r.get("sent", 0) for r in runs)
        if sum(r.get("dropped", 0) for r in runs) > 0.001 * max(sent, 1):
            return {"note": "overloaded at this rate: no latency figure"}
        late, busy = m(res, "lat", "late_us"), m(res, "lat", "load_cpu_util")
        if (late == late and late > harness_late_us) or (busy == busy and busy > 0.9):
            return {"note": "load generator saturated: no latency figure"}
        return {"p50": m(res, "lat", "p50_us"), "p99": m(res, "lat", "p99_us"),
                "p99.9": m(res, "lat", "p999_us")}

    charts = {
        "throughput": bars("Throughput, keep-alive, small body (higher is better)", "req/s",
                           [(n, lab, m(r, "ka", "rps")) for n, lab, r in cases]),
        "cpu": bars("CPU per request, keep-alive (lower is better)", "µs CPU / request",
                    [(n, lab, m(r, "ka", "cpu_us")) for n, lab, r in cases]),
        "latency": latency(
            "Latency at a fixed open-loop rate (log scale, lower is better)",
            [(n, lab, lat(r)) for n, lab, r in cases if "lat" in r]),
    }
    files = {}
    for name, svg in charts.items():
        path = outdir / f"{name}.svg"
        path.write_text(svg)
        files[name] = path
    return files
