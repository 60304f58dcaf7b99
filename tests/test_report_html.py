"""`edgeopt report`: the HTML page rendered in real headless Chromium, from real bundles and a real bench run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeopt import api
from edgeopt.errors import InputFileError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the report (the report itself has no script): once loaded, write each image's
# decoded size and each table's row count into the DOM, which --dump-dom then prints.
_PROBE = """<script>
window.addEventListener('load', () => {
  const out = {imgs: {}, tables: {}};
  for (const i of document.images) out.imgs[i.id] = [i.complete, i.naturalWidth, i.naturalHeight];
  for (const t of document.querySelectorAll('table'))
    out.tables[t.className] = (out.tables[t.className] || 0) + t.tBodies[0].rows.length;
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bert_dir, make_small_profile):
    """Three bundles of the tiny BERT in two formats (ONNX int8 and LiteRT fp32, both benchmarked locally;
    ONNX fp32, never benchmarked), a few seconds each."""
    out = tmp_path_factory.mktemp("report")
    profile = make_small_profile()
    a = api.package(str(tiny_bert_dir), profile=profile, out=out / "a", fmt="onnx", precision="int8",
                    recover_seconds=0)
    b = api.package(str(tiny_bert_dir), profile=profile, out=out / "b", fmt="onnx", precision="fp32",
                    recover_seconds=0)
    c = api.package(str(tiny_bert_dir), profile=profile, out=out / "c", fmt="tflite", precision="fp32",
                    recover_seconds=0)
    for bundle in (a, c):
        bench = api.bench(bundle.bundle_path, runs=5, min_seconds=0.1, repeats=2, warmup=1)
        assert bench.saved_to and Path(bench.saved_to).is_file()
    return a.bundle_path, b.bundle_path, a.manifest, b.manifest, c.bundle_path, c.manifest


def test_summary_and_pareto(bundles):
    from edgeopt.report_html import _collect

    a, b, ma, mb, _c, _mc = bundles
    text = api.report([a, b])
    assert "onnxruntime/int8" in text and "bench local" in text
    _loaded, points, metric, higher = _collect([a, b])
    assert metric == "mean_cosine" and higher
    # every attempt of the plan and every --all-formats entry is a point, each with its bytes
    attempts = sum(len(r.get("attempts") or []) for m in (ma, mb) for r in m["plan"]["rows"])
    others = sum(1 for e in mb.get("all_formats") or [] if e.get("bytes") and e["status"] != "chosen")
    assert len(points) == attempts + others >= 2
    measured = [p for p in points if p.measured]
    assert len(measured) == 1 and measured[0].runtime == "onnxruntime" and measured[0].precision == "int8"
    # Pareto: nothing dominates a marked point, and every unmarked point with all three numbers is dominated
    full = [p for p in points if p.latency_ms is not None and p.fidelity]
    key = lambda p: (p.bytes, p.latency_ms, -p.fidelity["mean_cosine"])
    dominates = lambda q, p: all(x <= y for x, y in zip(key(q), key(p))) and key(q) != key(p)
    assert any(p.pareto for p in full)
    for p in full:
        assert p.pareto == (not any(dominates(q, p) for q in full if q is not p))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/install-test-deps.sh installs it)")
def test_html_in_headless_chromium(bundles, tmp_path):
    a, b, ma, mb, c, mc = bundles
    page = tmp_path / "report.html"
    text = api.report([a, b, c], html=page)
    assert f"HTML report: {page}" in text
    html = page.read_text(encoding="utf-8")
    # self-contained: no external URL, no script, images inline
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<script" not in html
    dom, seen = _render(html, tmp_path)
    for img in ("pareto-plot", "latency-plot"):
        complete, width, height = seen["imgs"][img]
        assert complete and width > 300 and height > 200, (img, seen["imgs"])
    n_plan = sum(len(m["plan"]["rows"]) for m in (ma, mb, mc))
    assert seen["tables"]["plan"] == n_plan
    assert seen["tables"]["fidelity"] == sum(len(m["artifacts"]) for m in (ma, mb, mc))
    assert seen["tables"]["bench"] == 2  # one local run of each format
    assert seen["tables"]["points"] >= 3
    # the plan rows, the fidelity numbers and both formats' runs are in the rendered DOM
    assert "onnxruntime/int8" in dom and "litert/fp32" in dom
    for m in (ma, mb, mc):
        assert f"{m['fidelity']['mean_cosine']:.5f}" in dom


def _render(html: str, tmp_path: Path) -> tuple[str, dict]:
    """The DOM headless Chromium built from ``html``, and what the probe script saw in it."""
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                          check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    return dom, json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/install-test-deps.sh installs it)")
def test_all_formats_in_html(tiny_bert_dir, tmp_path, small_profile):
    """--all-formats: every other format is a point of the Pareto plot and a row of the side-by-side table
    (about a minute: it builds ExecuTorch and LiteRT too)."""
    from edgeopt.report_html import _collect

    c = api.package(str(tiny_bert_dir), profile=small_profile, out=tmp_path / "c", fmt="onnx", precision="fp32",
                    all_formats=True, recover_seconds=0)
    others = [e for e in c.manifest["all_formats"] if e.get("bytes") and e["status"] != "chosen"]
    _loaded, points, _metric, _higher = _collect([c.bundle_path])
    assert sorted((p.runtime, p.bytes) for p in points if p.status != "chosen") == \
        sorted((e["runtime"], e["bytes"]) for e in others)
    page = tmp_path / "c.html"
    api.report([c.bundle_path], html=page)
    dom, seen = _render(page.read_text(encoding="utf-8"), tmp_path)
    assert seen["tables"]["all-formats"] == len(c.manifest["all_formats"])
    assert seen["tables"]["points"] == len(points)
    complete, width, height = seen["imgs"]["pareto-plot"]
    assert complete and width > 300 and height > 200
    assert "latency-plot" not in seen["imgs"] and "No stored bench results" in dom


def test_not_a_bundle(tmp_path):
    with pytest.raises(InputFileError, match="not an edgeopt bundle"):
        api.report([tmp_path])
    with pytest.raises(InputFileError, match="not a folder"):
        api.report([tmp_path / "missing"])
