"""edgeopt's Python API end to end: profile → plan → package → bench.

    python examples/python_api.py [MODEL] [--out dist]

MODEL defaults to the built-in all-MiniLM-L6-v2; pass a Hugging Face directory for your own model.
"""

from __future__ import annotations

import argparse

import edgeopt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--out", default="dist")
    ap.add_argument("--profile", default="arm-mobile")
    args = ap.parse_args()

    profile = edgeopt.load_profile(args.profile)
    print(f"profile {profile.name}: {profile.limits.model_ram_mb} MB RAM, {profile.limits.model_storage_mb} MB storage")

    plan = edgeopt.make_plan(args.model, profile=profile)
    for row in plan.rows:
        reason = "; ".join(row.reasons) or "fits"
        print(f"  {row.candidate.key:18} {row.status.value:9} {reason}")

    result = edgeopt.package(args.model, profile=profile, out=args.out, force=True)
    art = result.manifest["artifacts"][0]
    fid = result.manifest["fidelity"]
    print(f"bundle {result.bundle_path}: {art['runtime']} {art['precision']}, {art['bytes'] / 2**20:.1f} MB, "
          f"mean cosine {fid['mean_cosine']:.4f}")

    bench = edgeopt.bench(result.bundle_path, runs=10, min_seconds=0.2, repeats=2, warmup=2)
    print(f"host latency p50 {bench.latency_ms['p50']:.2f} ms, peak RSS {bench.peak_rss_mb:.0f} MB, "
          f"parity min cosine {bench.parity['min_cosine']:.4f}")


if __name__ == "__main__":
    main()
