"""Step 2 of make_profile.sh: the edits a person makes to `edgeopt profiles detect` output for a Raspberry Pi 5.

    python edit_profile.py DETECTED.yaml OUT.yaml

detect measures what it can (cores, RAM, CPU flags, max clock, copy bandwidth); it cannot know the budgets, the
thermals, the targets or which runtimes the board has. Each edit can be changed from the environment:

    PI5_NAME            rpi5   profile name
    PI5_MODEL_RAM_MB    1024   run-time memory for the model; detect proposes a quarter of RAM, which leaves the
                               OS, a desktop and the rest of the application too little on a 4 GB board
    PI5_STORAGE_MB      512    artifact size limit (a microSD card reads ~50-90 MB/s: well under 10 s to load)
    PI5_THERMAL_DERATE  0.75   multiplies every compute rate: without the Active Cooler a Pi 5 throttles from
                               80 C under sustained all-core load (use 1 with the Active Cooler)
    PI5_LATENCY_MS      100    latency target (one step of a ~10 Hz sensor or voice pipeline)

Measurements (device.*, limits.precisions, compute.memory_bandwidth_gbps) are kept as detected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from edgeopt.profiles import dump_profile_yaml

RUNTIMES = ["litert", "onnxruntime", "executorch"]  # all three have aarch64 Linux wheels for Python 3.11;
# LiteRT (ai-edge-litert, XNNPACK) is the usual Pi path, ONNX Runtime next, ExecuTorch's aarch64 wheel is newest


def _number(name: str, default: str, kind: type = float) -> float:
    text = os.environ.get(name, default)
    try:
        value = kind(text)
    except ValueError:
        sys.exit(f"{name} must be a {kind.__name__} number, got {text!r}")
    if value <= 0:
        sys.exit(f"{name} must be positive, got {text!r}")
    return value


def edit(detected: dict) -> dict:
    """The Raspberry Pi 5 profile made from ``detected`` (a parsed ``profiles detect`` YAML), with the env's edits."""
    derate = _number("PI5_THERMAL_DERATE", "0.75")
    if derate > 1:
        sys.exit(f"PI5_THERMAL_DERATE must be at most 1 (1 = no throttling), got {derate}")
    p = {**detected}
    device = p["device"]
    if device["arch"] != "arm64" or device["cores"] != 4:
        print(f"note: this machine ({device['arch']}, {device['cores']} cores) is not a Raspberry Pi 5: the profile "
              "keeps its measurements, not a Pi's (rpi5.yaml has a Pi's)", file=sys.stderr)
    p["name"] = os.environ.get("PI5_NAME", "rpi5")
    p["description"] = ("Raspberry Pi 5 (Broadcom BCM2712, 4x Cortex-A76 @ 2.4 GHz), Raspberry Pi OS 64-bit, CPU only; "
                        f"from `edgeopt profiles detect` on: {device.get('cpu') or 'unknown CPU'}")
    p["device"] = {**device, "cpu": "Broadcom BCM2712 (4x Cortex-A76 @ 2.4 GHz)"}
    p["limits"] = {**p["limits"], "model_ram_mb": int(_number("PI5_MODEL_RAM_MB", "1024", int)),
                   "model_storage_mb": int(_number("PI5_STORAGE_MB", "512", int))}
    compute = {**p["compute"]}
    # One thread per core (the A76 has no SMT; a board runs one model at a time). A profile may not ask for more
    # threads than device.cores, so on a smaller machine (a 2-core CI runner) this is capped.
    compute["threads"] = min(4, int(device["cores"]))
    for key in ("fp32_gflops", "fp16_gflops", "int8_gops"):
        if compute.get(key):
            compute[key] = round(compute[key] * derate, 1)
    p["compute"] = compute  # memory_bandwidth_gbps stays as measured
    p["runtimes"] = list(RUNTIMES)
    p["shapes"] = {**p.get("shapes", {}), "context_len": 256}  # KV cache planned for small decoder LMs
    fidelity = {"min_cosine": 0.99, **p.get("targets", {}).get("fidelity", {}),
                "max_perplexity_ratio": 1.05, "max_kl": 0.05}  # the LM gates of the built-in profiles
    p["targets"] = {"latency_ms": _number("PI5_LATENCY_MS", "100"), "fidelity": fidelity}
    return p


def main() -> None:
    """Read the detected profile, apply the edits, write the result with a header saying what came from where."""
    if len(sys.argv) != 3:
        sys.exit("usage: python edit_profile.py DETECTED.yaml OUT.yaml")
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    p = edit(yaml.safe_load(src.read_text(encoding="utf-8")))
    c, lim, derate = p["compute"], p["limits"], _number("PI5_THERMAL_DERATE", "0.75")
    header = f"""\
edgeopt profile for a Raspberry Pi 5, written by examples/raspberry-pi-5/make_profile.sh.
Measured by `edgeopt profiles detect` ({src.name}): device (but cpu), limits.precisions,
compute.memory_bandwidth_gbps. Computed by detect from the CPU flags and max clock: compute *_gflops / *_gops
(sustained, about half of peak), then multiplied by {derate} for thermal throttling (PI5_THERMAL_DERATE;
1 with the Active Cooler). Chosen: model_ram_mb {lim['model_ram_mb']} (headroom for the OS),
model_storage_mb {lim['model_storage_mb']}, threads {c['threads']}, latency_ms {p['targets']['latency_ms']:g},
runtimes {' > '.join(RUNTIMES)}, context_len 256.
Next: bench bundles on the board and fit the compute numbers with `edgeopt profiles calibrate`."""
    dst.write_text(dump_profile_yaml(p, header=header), encoding="utf-8")
    print(f"wrote {dst}", file=sys.stderr)


if __name__ == "__main__":
    main()
