"""Human-readable text from manifests and plans: the plan table, a bundle's README.md and report.md."""

from __future__ import annotations

MB = 1024 * 1024


def plan_rows(plan_dict: dict) -> list[list[str]]:
    """The plan table as rows of strings: candidate, size, RAM, latency, status, fidelity, reason."""
    rows = []
    for r in plan_dict["rows"]:
        c, est = r["candidate"], r.get("estimate") or {}
        fid = r.get("fidelity")
        rows.append([
            f"{c['runtime']}/{c['precision']}",
            f"{est['artifact_bytes'] / MB:.1f}" if est else "-",
            f"{est['peak_ram_bytes'] / MB:.0f}" if est else "-",
            f"{est['latency_ms']:.1f}" if est else "-",
            r["status"],
            f"{fid['mean_cosine']:.4f}" if fid and fid.get("mean_cosine") is not None else "-",
            "; ".join(r.get("reasons", [])),
        ])
    return rows


PLAN_HEADER = ["candidate", "size MB", "RAM MB", "est ms", "status", "cosine", "reason"]


def plan_markdown(plan_dict: dict) -> str:
    lines = ["| " + " | ".join(PLAN_HEADER) + " |", "|" + "---|" * len(PLAN_HEADER)]
    for row in plan_rows(plan_dict):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def bundle_report(manifest: dict) -> str:
    """report.md: what was chosen, why, and what it measured."""
    art = manifest["artifacts"][0]
    fid = manifest["fidelity"]
    est = manifest.get("estimates") or {}
    prof = manifest["profile"]
    lines = [
        f"# {manifest['model']['name']} for {prof['name']}",
        "",
        f"Chosen: **{art['runtime']} / {art['precision']}** — {art['scheme']['description']}; "
        f"{art['bytes'] / MB:.1f} MB.",
        "",
        "## Fidelity (held-out inputs, against the fp32 PyTorch model)",
        "",
        f"- mean cosine {fid['mean_cosine']:.5f}, worst sample {fid['min_cosine']:.5f} (tolerance: mean ≥ "
        f"{prof['targets']['fidelity']['min_cosine']})",
        f"- SQNR {fid['sqnr_db']:.1f} dB, max abs error {fid['max_abs_err']:.3g}, {fid['samples']} samples",
        "",
        "## Estimates for the profile's device",
        "",
    ]
    if est:
        lines += [f"- artifact {est['artifact_bytes'] / MB:.1f} MB, peak RAM {est['peak_ram_bytes'] / MB:.0f} MB "
                  f"(limit {prof['limits']['model_ram_mb']} MB), latency {est['latency_ms']:.1f} ms"]
    q = art.get("quantization")
    if q:
        lines += ["", "## Quantization coverage", "",
                  f"{q['quantized_count']} of {q['total']} weight tensors quantized; kept float:"]
        lines += [f"- `{name}`: {why}" for name, why in q["kept_float"].items()] or ["- none"]
    lines += ["", "## Candidates", "", plan_markdown(manifest["plan"]), ""]
    return "\n".join(lines)


def bundle_readme(manifest: dict) -> str:
    """README.md for the app developer: runtime, inputs/outputs, how to benchmark on the device."""
    art = manifest["artifacts"][0]
    versions = manifest.get("toolchain", {})
    runtime = art["runtime"]
    version = versions.get(runtime, "see manifest.json")

    def io_lines(specs):
        return [f"| `{s['name']}` | {s['dtype']} | {s['shape']} |" for s in specs]

    return "\n".join([
        f"# {manifest['model']['name']} — {art['runtime']} {art['precision']} bundle",
        "",
        f"Made by edgeopt {manifest['edgeopt_version']} for the `{manifest['profile']['name']}` profile.",
        "",
        "## Load it in your app",
        "",
        f"- Artifact: `{art['file']}` ({art['format']}, {art['bytes']} bytes, sha256 `{art['sha256']}`)",
        f"- Runtime: **{runtime} {version}** — use this version (or newer) of the runtime in the app.",
        "",
        "Inputs:",
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
        *io_lines(art["inputs"]),
        "",
        "Outputs:",
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
        *io_lines(art["outputs"]),
        "",
        "Shapes are fixed at export time (the profile's batch and sequence length): pad inputs to them.",
        "",
        "## Benchmark it on the device",
        "",
        "Copy this folder to the device (it needs Python 3.9+, numpy and the runtime above), then run:",
        "",
        "```sh",
        "sh bench.sh --runs 100 --min-seconds 5 --out result.json",
        "```",
        "",
        "It checks the artifact's sha256 against `manifest.json`, measures load time, first inference,",
        "latency percentiles and peak RSS, checks the outputs against `inputs.npz`, and prints one JSON object.",
        "From a host with edgeopt: `edgeopt bench THIS_FOLDER --device local`.",
        "",
    ])
