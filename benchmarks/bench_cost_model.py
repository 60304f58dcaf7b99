"""The cost model against measurement: predicted vs measured latency and peak RSS, every format x precision.

    python benchmarks/bench_cost_model.py [--work DIR] [--runs 30] [--collect-only]

1. `edgeopt profiles detect` describes this machine (the desktop-cpu class: x86-64 AVX2); fp16 is added to its
   precisions so the fp16 cells are measured too.
2. MiniLM-L6, a 5.3 M-parameter Llama decoder and a 3.5 M-parameter BERT (benchmarks/bench_models.py) are
   packaged for that profile in every format x precision (`--format --precision`), and each bundle is benchmarked with
   `edgeopt bench --device local` (the Python runner, the profile's threads). Bundles and their stored results
   are kept in --work and reused on a re-run.
3. `edgeopt profiles calibrate` fits the profile's compute numbers to those results (the closed loop), and the
   table prints each cell's measured p50 and peak RSS beside the prediction from the detected profile
   (uncalibrated) and from the calibrated one, as measured / predicted.

Targets (issue: the planner): with the calibrated profile, peak RSS within +-20% and latency within +-35% of the
measurement in every cell. A second fit without the BERT predicts the BERT's cells, which shows how far the
fitted numbers carry to a model they were not fitted on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RUNTIMES = ("onnxruntime", "executorch", "litert")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
RSS_BOUND, LATENCY_BOUND = 0.20, 0.35


def _host_profile(work: Path) -> Path:
    import yaml

    path = work / "host.yaml"
    if path.is_file():
        return path
    text = subprocess.run([sys.executable, "-m", "edgeopt.cli", "profiles", "detect", "--name", "host"],
                          capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(text)
    data["limits"]["precisions"] = list(PRECISIONS)
    # int4 MiniLM keeps cosine ~0.96: the gate is lowered so those cells get built and measured.
    data["targets"]["fidelity"]["min_cosine"] = 0.9
    data["description"] += " (fp16 and min_cosine 0.9 set by bench_cost_model.py so every cell gets built)"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _models(work: Path) -> dict[str, str | None]:
    from bench_models import make_small_encoder, make_tiny_decoder

    return {"MiniLM-L6": None, "llama-5m": str(make_tiny_decoder(work / "llama-5m")),
            "bert-small": str(make_small_encoder(work / "bert-small"))}


def collect(work: Path) -> list[Path]:
    """Package every model x runtime x precision (kept in --work and reused); returns the bundle folders."""
    from edgeopt import api
    from edgeopt.errors import EdgeoptError

    profile = _host_profile(work)
    bundles = []
    for name, model in _models(work).items():
        for runtime in RUNTIMES:
            for precision in PRECISIONS:
                out = work / "bundles" / f"{name}-{runtime}-{precision}"
                found = [m.parent for m in out.glob("*/manifest.json")]
                if found:
                    bundles.append(found[0])
                    continue
                t = time.perf_counter()
                try:
                    bundle = api.package(model, profile=str(profile), out=out, fmt=runtime, precision=precision,
                                         force=True).bundle_path
                except EdgeoptError as e:
                    print(f"{name} {runtime} {precision}: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
                    continue
                print(f"{name} {runtime} {precision}: built in {time.perf_counter() - t:.0f} s", flush=True)
                bundles.append(bundle)
    return bundles


def measure(bundles: list[Path], rounds: int, runs: int, min_seconds: float) -> list[Path]:
    """Bench every bundle once per round, cells interleaved, so slow drift on a shared machine spreads over
    all cells instead of landing on a few. Each run is a fresh runner process (its own peak RSS)."""
    from edgeopt import api
    from edgeopt.errors import EdgeoptError

    files = []
    for r in range(rounds):
        for bundle in bundles:
            try:
                res = api.bench(bundle, runs=runs, min_seconds=min_seconds, warmup=5, repeats=1, cooldown_s=0.2)
            except EdgeoptError as e:
                print(f"{bundle.name}: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
                continue
            files.append(Path(res.saved_to))
        print(f"round {r + 1}/{rounds} measured", flush=True)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeopt-bench-cost"))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median taken)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--collect-only", action="store_true", help="only package (no measuring, no table)")
    ap.add_argument("--results", type=Path, help="skip measuring: report from the result files listed in this file")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.results:
        return report(args.work, [Path(line) for line in args.results.read_text().split()])
    bundles = collect(args.work)
    if args.collect_only:
        return 0
    files = measure(bundles, args.rounds, args.runs, args.min_seconds)
    (args.work / "results.txt").write_text("".join(f"{f}\n" for f in files))
    return report(args.work, files)


def _artifact_bytes(point) -> int | None:
    manifest = Path(point.source.split(" runs of ")[-1]).parent.parent / "manifest.json"
    try:
        import json

        return json.loads(manifest.read_text())["artifacts"][0]["bytes"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def report(work: Path, files: list[Path]) -> int:
    from edgeopt.planner.calibrate import calibrate, load_points, merge_repeats
    from edgeopt.planner.cost import estimate
    from edgeopt.profiles import load_profile

    points = merge_repeats(load_points(files))
    base = load_profile(str(_host_profile(work)))
    calibrated = calibrate(points, base)
    held_out = "bert-small"
    fitted_without = calibrate([p for p in points if p.stats.model_name != held_out], base)
    (work / "host-calibrated.yaml").write_text(_yaml(calibrated))

    def cell(q, prof):
        e = estimate(q.stats, prof, q.runtime, q.precision)
        return e.latency_ms, e.peak_ram_bytes / 2**20, e.artifact_bytes

    head = (f"{'model':<18}{'runtime':<12}{'prec':<6}{'p50 ms':>8}{'uncal':>7}{'cal':>7}{'x-model':>8}"
            f"{'RSS MB':>8}{'uncal':>7}{'cal':>7}{'x-model':>8}{'size':>7}{'valid':>6}")
    print("measured, and measured / predicted by the detected profile (uncal), the profile calibrated on all cells "
          f"(cal), and one calibrated without {held_out} (x-model: {held_out}'s rows are out of sample); "
          "size = actual / predicted artifact bytes")
    print(head)
    worst = {"lat": 0.0, "rss": 0.0, "xlat": 0.0, "xrss": 0.0}
    for q in sorted(points, key=lambda q: (q.stats.model_name, q.runtime.value, list(PRECISIONS).index(q.precision.value))):
        u, c, x = cell(q, base), cell(q, calibrated), cell(q, fitted_without)
        size = _artifact_bytes(q)
        lat = [q.latency_ms / v[0] for v in (u, c, x)]
        rss = [q.peak_rss_mb / v[1] for v in (u, c, x)]
        worst["lat"], worst["rss"] = max(worst["lat"], abs(lat[1] - 1)), max(worst["rss"], abs(rss[1] - 1))
        if q.stats.model_name == held_out:
            worst["xlat"], worst["xrss"] = max(worst["xlat"], abs(lat[2] - 1)), max(worst["xrss"], abs(rss[2] - 1))
        print(f"{q.stats.model_name:<18}{q.runtime.value:<12}{q.precision.value:<6}{q.latency_ms:>8.2f}"
              + "".join(f"{r:>7.2f}" for r in lat[:2]) + f"{lat[2]:>8.2f}"
              + f"{q.peak_rss_mb:>8.0f}" + "".join(f"{r:>7.2f}" for r in rss[:2]) + f"{rss[2]:>8.2f}"
              + (f"{size / c[2]:>7.2f}" if size else f"{'-':>7}") + f"{'yes' if q.valid else 'no':>6}")
    ok_lat, ok_rss = worst["lat"] <= LATENCY_BOUND, worst["rss"] <= RSS_BOUND
    print(f"\ncalibrated: worst latency miss {worst['lat']:.0%} (target <= {LATENCY_BOUND:.0%}: "
          f"{'MET' if ok_lat else 'NOT MET'}), worst peak-RSS miss {worst['rss']:.0%} (target <= {RSS_BOUND:.0%}: "
          f"{'MET' if ok_rss else 'NOT MET'})")
    print(f"fitted on the other models, predicting {held_out} out of sample: worst latency miss {worst['xlat']:.0%}, "
          f"worst peak-RSS miss {worst['xrss']:.0%}")
    print(f"calibrated profile written to {work / 'host-calibrated.yaml'}")
    return 0 if ok_lat and ok_rss else 1


def _yaml(profile) -> str:
    from edgeopt.profiles import dump_profile_yaml

    return dump_profile_yaml(profile.to_dict(), header="# written by benchmarks/bench_cost_model.py")


if __name__ == "__main__":
    sys.exit(main())
