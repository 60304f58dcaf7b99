"""``edgeopt report``: one or more bundles as a terminal summary and a self-contained HTML page.

The page has, per bundle, the plan table (estimates, status, measured fidelity), the fidelity of what was
bundled, every stored bench result beside the plan's estimate, and two plots made with matplotlib (Agg,
inlined as base64 PNG; no script, no external URL):

- the Pareto front of artifact size vs latency over every candidate built (each attempt of the plan) and
  every format of ``--all-formats``; colour is fidelity, marker says whether the latency was measured (p50 of
  a stored bench result of that artifact) or estimated by the cost model; Pareto-optimal points (no other
  point is at least as small, as fast and as faithful, and better in one) are ringed and labelled;
- the latency distribution per device and run. Bench records keep summary statistics, not every sample,
  so each run is drawn from what exists: whiskers min..max, box p50..p90, a tick at p99, a diamond at the
  mean, and dots for the p90 of each repeat.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1024 * 1024


@dataclass
class _Point:
    """One artifact built: a plan attempt or an ``--all-formats`` entry."""

    bundle: str
    runtime: str
    precision: str
    bytes: int
    fidelity: dict | None
    status: str
    latency_ms: float | None = None
    measured: bool = False
    measured_valid: bool = True
    pareto: bool = False

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.precision}"


@dataclass
class _Loaded:
    path: Path
    name: str
    manifest: dict
    records: list[dict]
    points: list[_Point] = field(default_factory=list)


def _load(bundles: list[Path]) -> list[_Loaded]:
    from edgeopt.benchmark.store import load_records
    from edgeopt.bundle import Bundle
    from edgeopt.errors import InputFileError, UsageError

    if not bundles:
        raise UsageError("report: pass at least one bundle folder (what `edgeopt package` wrote)")
    out = []
    for p in bundles:
        path = Path(p)
        if not path.is_dir():
            raise InputFileError(f"{path}: not a folder; pass the bundle folder `edgeopt package` wrote")
        b = Bundle.open(path)
        m = b.manifest
        for key in ("plan", "artifacts", "fidelity", "model", "profile"):
            if key not in m:
                raise InputFileError(f"{path / 'manifest.json'}: not an edgeopt bundle manifest (no {key!r}); "
                                     "package the model again with `edgeopt package`")
        name = f"{m['model'].get('name', '?')}-{m['profile'].get('name', '?')}"
        loaded = _Loaded(path, name, m, load_records(path))
        loaded.points = _points(loaded)
        out.append(loaded)
    names = [b.name for b in out]
    for b in out:  # two bundles of the same model and profile: tell them apart by folder
        if names.count(b.name) > 1:
            b.name = f"{b.path.parent.name}/{b.path.name}"
            for pt in b.points:
                pt.bundle = b.name
    return out


def _p50(record: dict) -> float | None:
    gen = (record.get("result") or {}).get("generation")
    if gen and gen.get("ttft_ms") is not None:  # a decoder LM: the prompt's prefill, what the plan estimates
        return gen["ttft_ms"]
    lat = (record.get("result") or {}).get("latency_ms") or {}
    return lat.get("p50") if lat.get("p50") is not None else lat.get("mean")


def _points(b: _Loaded) -> list[_Point]:
    """Every artifact built for this bundle, deduplicated, with a measured or estimated latency."""
    m = b.manifest
    estimates: dict[tuple[str, str], float] = {}
    pts: list[_Point] = []
    for row in (m.get("plan") or {}).get("rows") or []:
        c = row.get("candidate") or {}
        key = (c.get("runtime"), c.get("precision"))
        if isinstance(row.get("estimate"), dict) and row["estimate"].get("latency_ms") is not None:
            estimates.setdefault(key, row["estimate"]["latency_ms"])
        attempts = row.get("attempts") or []
        for i, a in enumerate(attempts):
            last = i == len(attempts) - 1
            status = row.get("status") if last and row.get("status") == "chosen" else "missed fidelity"
            if a.get("bytes"):
                pts.append(_Point(b.name, key[0], key[1], int(a["bytes"]), a.get("fidelity"), status))
    for e in m.get("all_formats") or []:
        if e.get("bytes") and e.get("status") != "chosen":  # the chosen one is the plan's last attempt
            pts.append(_Point(b.name, e["runtime"], e["precision"], int(e["bytes"]), e.get("fidelity"),
                              "bundled" if e.get("status") == "bundled" else (e.get("status") or "?")))
    # Measured latency: median of the stored runs' p50 for the bundled artifact of that runtime and size.
    by_file = {a.get("file"): a for a in m.get("artifacts") or [] if isinstance(a, dict)}
    # Runs the runner marked invalid (unstable, throttled) are used only when no valid run exists, and say so.
    measured: dict[tuple[str, str, int], list[tuple[bool, float]]] = {}
    for r in b.records:
        art = by_file.get((r.get("bundle") or {}).get("artifact"))
        p50 = _p50(r)
        if art and p50 is not None:
            key = (art.get("runtime"), art.get("precision"), art.get("bytes"))
            measured.setdefault(key, []).append((bool((r.get("result") or {}).get("valid")), p50))
    for p in pts:
        runs = measured.get((p.runtime, p.precision, p.bytes))
        if runs:
            valid = sorted(v for ok, v in runs if ok)
            chosen = valid or sorted(v for _, v in runs)
            p.latency_ms, p.measured, p.measured_valid = chosen[len(chosen) // 2], True, bool(valid)
        else:
            p.latency_ms = estimates.get((p.runtime, p.precision))
    return pts


def _quality(points: list[_Point]) -> tuple[str, bool]:
    """Which fidelity number colours the points: perplexity ratio when every point has one, else mean cosine."""
    ppl = [p for p in points if (p.fidelity or {}).get("perplexity_ratio") is not None]
    if points and len(ppl) == len(points):
        return "perplexity_ratio", False  # lower is better
    return "mean_cosine", True


def _fid(p: _Point, metric: str) -> float | None:
    v = (p.fidelity or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) else None


def _mark_pareto(points: list[_Point], metric: str, higher_better: bool) -> None:
    """Pareto-optimal over (smaller size, lower latency, better fidelity) among points with all three."""
    full = [p for p in points if p.latency_ms is not None and _fid(p, metric) is not None]

    def key(p: _Point) -> tuple[float, float, float]:
        f = _fid(p, metric)
        return (p.bytes, p.latency_ms, -f if higher_better else f)

    for p in full:
        kp = key(p)
        p.pareto = not any(all(a <= b for a, b in zip(key(q), kp)) and key(q) != kp for q in full if q is not p)


# --- plots -------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pareto_plot(points: list[_Point], metric: str, higher_better: bool) -> str | None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    shown = [p for p in points if p.latency_ms is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.2))
    vals = [_fid(p, metric) for p in shown]
    known = [v for v in vals if v is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1e-3, hi + 1e-3
    cmap = plt.get_cmap("viridis" if higher_better else "viridis_r")
    norm = matplotlib.colors.Normalize(vmin=lo, vmax=hi)
    for measured, marker, name in ((True, "o", "latency measured (bench p50)"),
                                   (False, "^", "latency estimated (cost model)")):
        sel = [(p, v) for p, v in zip(shown, vals) if p.measured is measured]
        if not sel:
            continue
        ax.scatter([p.bytes / MB for p, _ in sel], [p.latency_ms for p, _ in sel],
                   c=[cmap(norm(v)) if v is not None else "lightgrey" for _, v in sel],
                   marker=marker, s=70, edgecolors="none", label=name, zorder=3)
    front = sorted((p for p in shown if p.pareto), key=lambda p: p.bytes)
    if front:
        ax.scatter([p.bytes / MB for p in front], [p.latency_ms for p in front], s=240, facecolors="none",
                   edgecolors="crimson", linewidths=1.6, label="Pareto-optimal", zorder=4)
        for p in front:
            ax.annotate(p.label, (p.bytes / MB, p.latency_ms), textcoords="offset points", xytext=(8, 6),
                        fontsize=8, color="crimson")
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    label = "mean cosine vs fp32 (higher is better)" if higher_better else "perplexity ratio vs fp32 (lower is better)"
    fig.colorbar(sm, ax=ax, label=label, format="%.5f")
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("latency p50 (ms)")
    ax.set_title("size vs latency vs fidelity: every candidate and format built")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _runs(bundles: list[_Loaded]) -> list[tuple[str, dict]]:
    runs = []
    for b in bundles:
        for r in b.records:
            if (r.get("result") or {}).get("latency_ms"):
                res = r["result"]
                dev = (r.get("device") or {}).get("address") or "?"
                label = (f"{dev}\n{b.name}\n{(r.get('bundle') or {}).get('runtime', '?')} "
                         f"{(res.get('timestamp') or '')[:19]}")
                runs.append((label, r))
    return runs


def _latency_plot(bundles: list[_Loaded]) -> str | None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    runs = _runs(bundles)
    if not runs:
        return None
    stats = []
    for label, r in runs:
        lat = r["result"]["latency_ms"]
        stats.append({"label": label, "whislo": lat["min"], "q1": lat["p50"], "med": lat["p50"], "q3": lat["p90"],
                      "whishi": lat["max"], "mean": lat["mean"], "fliers": []})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(stats) + 2), 5.2))
    ax.bxp(stats, showmeans=True, meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"},
           patch_artist=True, boxprops={"facecolor": "#9ecae1"})
    for i, (_, r) in enumerate(runs, start=1):
        lat = r["result"]["latency_ms"]
        ax.hlines(lat["p99"], i - 0.25, i + 0.25, colors="crimson", linewidths=2,
                  label="p99" if i == 1 else None)
        reps = r["result"].get("repeats_p90_ms") or []
        ax.scatter([i + 0.3] * len(reps), reps, s=14, color="black", zorder=3,
                   label="p90 of each repeat" if i == 1 else None)
    lows = [st["whislo"] for st in stats if st["whislo"] > 0]
    if lows and max(st["whishi"] for st in stats) > 20 * min(lows):
        ax.set_yscale("log")  # a tail 20x the fastest run would flatten every box
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency per device and run: whiskers min..max, box p50..p90, diamond mean")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    plt.setp(ax.get_xticklabels(), fontsize=7)
    return _png(fig)


# --- tables ------------------------------------------------------------------------------------


def _fid_text(fid: dict | None) -> str:
    if not fid:
        return "-"
    if fid.get("perplexity_ratio") is not None:
        return f"ppl x{fid['perplexity_ratio']:.4f}, KL {fid.get('kl', float('nan')):.4f}"
    if fid.get("mean_cosine") is None:
        return "-"
    return f"cos {fid['mean_cosine']:.5f} (min {fid.get('min_cosine', float('nan')):.5f})"


def _fmt(v: Any, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _bench_rows(b: _Loaded) -> list[list[str]]:
    rows = []
    for r in b.records:
        res, cmp_ = r.get("result") or {}, (r.get("comparison") or {})
        lat, lc = res.get("latency_ms") or {}, cmp_.get("latency_ms") or {}
        ram = cmp_.get("peak_ram_mb") or {}
        rows.append([
            (r.get("device") or {}).get("address") or "?",
            f"{(r.get('bundle') or {}).get('runtime', '?')} {(r.get('bundle') or {}).get('artifact', '')}",
            (res.get("timestamp") or "")[:19],
            _fmt(lat.get("p50")), _fmt(lat.get("p90")), _fmt(lat.get("p99")),
            _fmt(lc.get("estimated")), _fmt(lc.get("ratio"), ".2f") + ("x" if lc.get("ratio") is not None else ""),
            _fmt(res.get("peak_rss_mb"), ".0f"), _fmt(ram.get("estimated"), ".0f"),
            "yes" if res.get("valid") else f"no: {res.get('invalid_reason') or '?'}",
            _tokens(res.get("generation")),
        ])
    return rows


def _tokens(gen: dict | None) -> str:
    """Decoder LMs: time to first token, prefill and decode tokens/s (latency columns are per decode step)."""
    if not gen:
        return "-"
    return (f"TTFT {_fmt(gen.get('ttft_ms'))} ms, prefill {_fmt(gen.get('prefill_tokens_per_s'), '.0f')} t/s, "
            f"decode {_fmt(gen.get('decode_tokens_per_s'), '.1f')} t/s")


_BENCH_HEADER = ["device", "artifact", "when (UTC)", "p50 ms", "p90 ms", "p99 ms", "est ms", "measured/est",
                 "peak RSS MB", "est RAM MB", "valid", "LM tokens (p50/p90/p99 are per decode step)"]
_POINT_HEADER = ["bundle", "candidate", "size MB", "latency ms", "latency from", "fidelity", "status", "Pareto"]


def _point_rows(points: list[_Point]) -> list[list[str]]:
    return [[p.bundle, p.label, f"{p.bytes / MB:.2f}", _fmt(p.latency_ms),
             ("measured" if p.measured_valid else "measured (only runs marked invalid)") if p.measured
             else ("estimated" if p.latency_ms is not None else "none"),
             _fid_text(p.fidelity), p.status, "yes" if p.pareto else ""] for p in points]


def _table(header: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0} tr.chosen td{font-weight:bold} img{max-width:100%}
.note{color:#555;font-size:0.85em} h2{border-bottom:2px solid #ddd;padding-bottom:0.2em}
"""


def _collect(bundles: list[Path]) -> tuple[list[_Loaded], list[_Point], str, bool]:
    loaded = _load([Path(b) for b in bundles])
    points = [p for b in loaded for p in b.points]
    metric, higher = _quality(points)
    _mark_pareto(points, metric, higher)
    return loaded, points, metric, higher


def render_html(bundles: list[Path]) -> str:
    """A self-contained HTML report of ``bundles`` (plots inline as base64 PNG, CSS inline, no scripts).

    Raises:
        InputFileError: a folder that is not a bundle, or a stored bench result that does not validate.
        UsageError: no bundles.
    """
    from edgeopt.report_md import PLAN_HEADER, plan_explanation, plan_rows

    loaded, points, metric, higher = _collect(bundles)
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgeopt report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>edgeopt report</h1>",
             "<p>" + ", ".join(f"<code>{e(str(b.path))}</code>" for b in loaded) + "</p>"]
    parts.append("<h2>Size vs latency vs fidelity</h2>")
    pareto = _pareto_plot(points, metric, higher)
    if pareto:
        parts.append(f'<img id="pareto-plot" alt="Pareto front: size vs latency vs fidelity" '
                     f'src="data:image/png;base64,{pareto}">')
    else:
        parts.append("<p>No candidate has a latency (no estimate, no bench): nothing to plot.</p>")
    parts.append("<p class='note'>Every artifact built: each attempt in the plan (a candidate retried with more "
                 "layers kept in float is one point per attempt) and each format of <code>--all-formats</code>. "
                 "Latency is the measured p50 of stored <code>edgeopt bench</code> runs of that artifact (median "
                 "over runs) where one exists (circles), else the cost model's estimate (triangles); the two are "
                 "not the same kind of number. Colour: "
                 + ("mean cosine of the outputs vs fp32." if higher else "perplexity ratio vs fp32.")
                 + " Ringed: Pareto-optimal (no other point is as small, as fast and as faithful, and better in "
                 "one).</p>")
    parts.append(_table(_POINT_HEADER, _point_rows(points), "points"))
    parts.append("<h2>Latency per device</h2>")
    lat = _latency_plot(loaded)
    if lat:
        parts.append(f'<img id="latency-plot" alt="latency distribution per device" '
                     f'src="data:image/png;base64,{lat}">')
        parts.append("<p class='note'>Stored bench results keep summary statistics, not every sample: each run "
                     "is drawn from them: whiskers min..max, box p50..p90 (the line is p50), red tick p99, "
                     "diamond mean, black dots the p90 of each repeat.</p>")
    else:
        parts.append("<p>No stored bench results: run <code>edgeopt bench BUNDLE</code> to measure.</p>")
    for b in loaded:
        m = b.manifest
        art = m["artifacts"][0] if m.get("artifacts") else {}
        parts.append(f"<h2>{e(b.name)}</h2>")
        parts.append(f"<p>Chosen: <b>{e(str(art.get('runtime')))} / {e(str(art.get('precision')))}</b>, "
                     f"{_fmt((art.get('bytes') or 0) / MB)} MB; fidelity {e(_fid_text(m.get('fidelity')))} "
                     f"({e(str((m.get('fidelity') or {}).get('samples', '?')))} held-out samples).</p>")
        parts.append("<h3>Plan</h3>")
        rows = plan_rows(m["plan"])
        head = "".join(f"<th>{e(h)}</th>" for h in PLAN_HEADER)
        body = "".join(f"<tr class='{e(r[5])}'>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        parts.append(f'<table class="plan"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
        for line in plan_explanation(m["plan"]):
            parts.append(f"<p class='note'>{e(line)}</p>")
        parts.append("<h3>Fidelity</h3>")
        fid_rows = [[a.get("file", "?"), f"{a.get('runtime')}/{a.get('precision')}", _fmt((a.get('bytes') or 0) / MB),
                     _fid_text(a.get("fidelity") or (m.get("fidelity") if i == 0 else None))]
                    for i, a in enumerate(m.get("artifacts") or [])]
        parts.append(_table(["artifact", "candidate", "size MB", "fidelity vs fp32"], fid_rows, "fidelity"))
        if m.get("all_formats"):
            parts.append("<h3>All formats</h3>")
            parts.append(_table(["candidate", "status", "size MB", "fidelity", "reason"],
                                [[f"{r['runtime']}/{r['precision']}", r.get("status") or "-",
                                  _fmt((r.get("bytes") or 0) / MB) if r.get("bytes") else "-",
                                  _fid_text(r.get("fidelity")), r.get("reason") or ""]
                                 for r in m["all_formats"]], "all-formats"))
        parts.append("<h3>Bench results (measured vs estimated)</h3>")
        if b.records:
            parts.append(_table(_BENCH_HEADER, _bench_rows(b), "bench"))
        else:
            parts.append(f"<p>None stored under <code>{e(str(b.path / 'results'))}</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summarize(bundles: list[Path]) -> str:
    """The report as plain text for the terminal: per bundle the chosen artifact, fidelity and bench runs;
    then every artifact built with its latency (measured or estimated) and whether it is Pareto-optimal.

    Raises:
        InputFileError: a folder that is not a bundle. UsageError: no bundles.
    """
    loaded, points, _metric, _higher = _collect(bundles)
    lines = []
    for b in loaded:
        m = b.manifest
        art = m["artifacts"][0] if m.get("artifacts") else {}
        lines.append(f"{b.name} ({b.path}): chosen {art.get('runtime')}/{art.get('precision')}, "
                     f"{_fmt((art.get('bytes') or 0) / MB)} MB, {_fid_text(m.get('fidelity'))}")
        for row in _bench_rows(b):
            lines.append(f"  bench {row[0]} {row[1]} at {row[2]}: p50 {row[3]} ms, p90 {row[4]} ms "
                         f"(estimated {row[6]} ms, {row[7]}), peak RSS {row[8]} MB, valid {row[10]}"
                         + (f"; {row[11]} (p50/p90 per decode step)" if row[11] != "-" else ""))
        if not b.records:
            lines.append("  no stored bench results (edgeopt bench BUNDLE)")
    lines.append("candidates built (size, latency, fidelity; * Pareto-optimal):")
    for r in _point_rows(points):
        lines.append(f"  {'*' if r[7] else ' '} {r[0]} {r[1]}: {r[2]} MB, {r[3]} ms ({r[4]}), {r[5]}, {r[6]}")
    return "\n".join(lines)
