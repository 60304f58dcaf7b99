#!/usr/bin/env python3
"""Turn a native benchmark binary's output into the runner's JSON result (``result_schema.json``).

``sh bench.sh --native PATH ...`` runs onnxruntime_perf_test, LiteRT's benchmark_model or ExecuTorch's
executor_runner on a device without Python and prints an *envelope*: ``key value`` header lines (tool,
artifact, sha256, device, sysfs readings), the tool's output, and, for onnxruntime_perf_test, its per-run
times. This module parses that envelope. It runs on the host (edgeopt does it after fetching the output) or
on a device that has Python: ``sh bench.sh --native ... | python3 runner/common/native.py --bundle .``

Standard library only, Python 3.9+. What a tool does not report stays null, and the result says why:
no native tool compares outputs with the reference (``parity`` null), so a native result is never
``valid``; a tool without per-run times gives no p90/p99, so ``latency_ms`` is null and what it did
report (mean, min, max, ...) is kept under ``extra.native.reported``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import sys

MAGIC = "edgeopt-native 1"
US_PER_MS = 1000.0
_NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$")
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")
NATIVE_PYTHON = "none (native benchmark)"


class NativeOutputError(ValueError):
    """The envelope or the tool's output is not what the tools print; the message says what is missing."""


# ------------------------------------------------------------------------------------------- envelope


def parse_envelope(text):
    """Split bench.sh's envelope into ``{"header": {key: value}, "output": str, "per_run": str or None}``."""
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != MAGIC:
        raise NativeOutputError("not a bench.sh --native envelope (it must start with %r, got %r)"
                                % (MAGIC, lines[0][:80] if lines else ""))
    header, i = {}, 1
    while i < len(lines) and lines[i] != "--- tool output ---":
        key, _, value = lines[i].partition(" ")
        if key:
            header[key] = value.strip()
        i += 1
    if i == len(lines):
        raise NativeOutputError("the envelope has no '--- tool output ---' section (truncated?)")
    body = lines[i + 1:]
    if "--- end ---" not in body:
        raise NativeOutputError("the envelope does not end with '--- end ---' (truncated on the way?)")
    body = body[:body.index("--- end ---")]
    per_run = None
    if "--- per-run ---" in body:
        cut = body.index("--- per-run ---")
        body, per_run = body[:cut], "\n".join(body[cut + 1:])
    for key in ("tool", "runtime", "artifact", "sha256"):
        if not header.get(key):
            raise NativeOutputError("the envelope header has no %r line" % key)
    return {"header": header, "output": "\n".join(body), "per_run": per_run}


# --------------------------------------------------------------------------------------------- tools


def parse_benchmark_model(text):
    """LiteRT/TFLite ``benchmark_model``: the last ``count=... avg=... std=...`` line is the timed block."""
    stats = _empty_stats()
    blocks = [m for m in re.finditer(r"count=(\d+)\s+(.*)$", text, re.MULTILINE)]
    timed = None
    for match in blocks:
        fields = dict(re.findall(r"(\w+)=" + _NUMBER, match.group(2)))
        fields["count"] = match.group(1)
        if "(all same)" in match.group(2) and "curr" in fields:
            fields.update({"min": fields["curr"], "max": fields["curr"], "avg": fields["curr"], "std": "0"})
        if "avg" in fields:
            timed = fields
    new = re.search(r"Inference timings in us: Init: %s, First inference: %s, Warmup \(avg\): %s, "
                    r"Inference \(avg\): %s" % ((_NUMBER,) * 4), text)
    old = re.search(r"Average inference timings in us: Warmup: %s, Init: %s, (?:Inference|no stats): %s"
                    % ((_NUMBER,) * 3), text)
    if timed is None and new is None and old is None:
        raise NativeOutputError("benchmark_model printed no timings" + _errors(text))
    if new:
        stats["load_ms"] = float(new.group(1)) / US_PER_MS
        stats["first_inference_ms"] = float(new.group(2)) / US_PER_MS
        stats["reported"]["mean"] = float(new.group(4)) / US_PER_MS
    elif old:
        stats["load_ms"] = float(old.group(2)) / US_PER_MS
        stats["reported"]["mean"] = float(old.group(3)) / US_PER_MS
    if timed:
        names = {"avg": "mean", "std": "std", "min": "min", "max": "max", "median": "p50", "p5": "p5", "p95": "p95"}
        for key, name in names.items():
            if key in timed:
                stats["reported"][name] = float(timed[key]) / US_PER_MS
        stats["timed_runs"] = int(timed["count"])
    peak = (re.search(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUMBER, text)
            or re.search(r"Peak memory footprint \(MB\): init=%s overall=%s" % (_NUMBER, _NUMBER), text))
    if peak:
        stats["peak_rss_mb"] = float(peak.groups()[-1])
    return stats


def parse_onnxruntime_perf_test(text, per_run=None):
    """``onnxruntime_perf_test -m times -r N -s``: its summary, and every run's time from its result file."""
    stats = _empty_stats()
    mean = _first(text, r"Average (?:inference )?time cost:\s*%s\s*ms" % _NUMBER)
    if mean is None:
        raise NativeOutputError("onnxruntime_perf_test printed no 'Average inference time cost'" + _errors(text))
    stats["reported"]["mean"] = mean
    load_s = _first(text, r"Session creation time cost:\s*%s\s*s" % _NUMBER)
    stats["load_ms"] = None if load_s is None else load_s * 1000.0
    stats["first_inference_ms"] = _first(text, r"First inference time cost:\s*%s\s*ms" % _NUMBER)
    count = _first(text, r"Total (?:inference requests|iterations):\s*(\d+)")
    stats["timed_runs"] = None if count is None else int(count)
    peak = _first(text, r"Peak working set size:\s*(\d+)\s*bytes")
    stats["peak_rss_mb"] = None if peak is None else round(peak / 1048576.0, 2)
    names = {"Min": "min", "Max": "max", "P50": "p50", "P90": "p90", "P95": "p95", "P99": "p99"}
    for label, name in names.items():
        m = re.search(r"^\s*%s Latency(?: is|:)\s*%s\s*(ms|s|sec)?\b" % (label, _NUMBER), text, re.MULTILINE)
        if m:
            stats["reported"][name] = float(m.group(1)) * (1.0 if m.group(2) == "ms" else 1000.0)
    times = _per_run_ms(per_run)
    if times and _agrees(sum(times) / len(times), mean):
        stats["reported"].update(latency_from_times(times))
        stats["timed_runs"] = len(times)
    elif times:
        stats["notes"].append("per-run times disagree with the reported average; ignored")
    return stats


def parse_executor_runner(text):
    """ExecuTorch ``executor_runner --num_executions=N``: only the total time of N runs (a mean)."""
    stats = _empty_stats()
    m = re.search(r"Model executed successfully (\d+) time\(s\) in %s ms" % _NUMBER, text)
    if m is None:
        if re.search(r"Model executed successfully \d+ time\(s\)\.", text):
            raise NativeOutputError("this executor_runner build does not print its execution time; use "
                                    "ExecuTorch 0.4 or newer" + _errors(text))
        raise NativeOutputError("executor_runner printed no 'Model executed successfully'" + _errors(text))
    runs = int(m.group(1))
    if runs < 1:
        raise NativeOutputError("executor_runner executed the model 0 times")
    stats["reported"]["mean"] = float(m.group(2)) / runs
    stats["timed_runs"] = runs
    stats["notes"].append("the mean includes the first execution (executor_runner has no warm-up)")
    return stats


PARSERS = {"benchmark_model": parse_benchmark_model, "onnxruntime_perf_test": parse_onnxruntime_perf_test,
           "executor_runner": parse_executor_runner}


def _empty_stats():
    return {"load_ms": None, "first_inference_ms": None, "timed_runs": None, "peak_rss_mb": None,
            "reported": {}, "notes": []}


def _first(text, pattern):
    m = re.search(pattern, text, re.MULTILINE)
    return float(m.group(1)) if m else None


def _errors(text):
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*(ERROR|E \d|\[E:|error)", ln)]
    return (": " + " | ".join(lines[-3:])[:500]) if lines else ""


def _per_run_ms(per_run):
    """Seconds per run from onnxruntime_perf_test's result file (``model,seconds[,seconds],peak,cpu,index``)."""
    times = []
    for line in (per_run or "").splitlines():
        parts = line.strip().split(",")
        if len(parts) < 5 or not parts[-1].strip().isdigit():
            continue
        try:  # newer versions write the submission time, then the total time
            seconds = float(parts[2] if len(parts) >= 6 else parts[1])
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            times.append(seconds * 1000.0)
    return times


def _agrees(a, b):
    return b > 0 and abs(a - b) <= 0.1 * b


def latency_from_times(times_ms):
    """mean, std, min, p50, p90, p99, max of per-run milliseconds (percentiles interpolated as numpy does)."""
    ordered = sorted(times_ms)
    n = len(ordered)
    mean = sum(ordered) / n
    std = math.sqrt(sum((t - mean) ** 2 for t in ordered) / n)

    def pct(q):
        pos = (n - 1) * q / 100.0
        low = math.floor(pos)
        high = min(low + 1, n - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    values = {"mean": mean, "std": std, "min": ordered[0], "p50": pct(50), "p90": pct(90), "p99": pct(99),
              "max": ordered[-1]}
    return {k: round(v, 4) for k, v in values.items()}


# -------------------------------------------------------------------------------------------- result


def result_from_envelope(text, expected_sha256, max_temp_rise_c=15.0, max_freq_drop=0.15):
    """The runner-schema result (a dict) for a bench.sh --native envelope.

    Args:
        expected_sha256: the artifact's hash from manifest.json; the device's hash is compared with it.

    Raises:
        NativeOutputError: a malformed envelope, an unknown tool, or output without timings.
    """
    env = parse_envelope(text)
    head = env["header"]
    parser = PARSERS.get(head["tool"])
    if parser is None:
        raise NativeOutputError("unknown tool %r; known: %s" % (head["tool"], ", ".join(sorted(PARSERS))))
    stats = parser(env["output"], env["per_run"]) if parser is parse_onnxruntime_perf_test else parser(env["output"])
    result = _skeleton(head, expected_sha256, stats)
    _fill_readings(result, head)
    _set_validity(result, head, stats, max_temp_rise_c, max_freq_drop)
    return result


def _skeleton(head, expected, stats):
    runner = _runner()
    sha = head["sha256"] if _SHA256.match(head["sha256"]) else None
    reported = {k: round(v, 4) for k, v in stats["reported"].items()}
    complete = all(k in reported for k in LATENCY_KEYS)
    cores = _int(head.get("cores"))
    threads = _int(head.get("threads")) or cores or 1
    ram_kb = _int(head.get("ram_kb"))
    pinned = [int(c) for c in head.get("cores_pinned", "").split(",") if c.isdigit()] or None
    stamp = head.get("timestamp", "")
    return {
        "schema_version": runner.SCHEMA_VERSION,
        "runtime": {"name": head["runtime"][:32], "version": None},
        "device": {"machine": head.get("machine", "")[:64] or "unknown", "cpu": head.get("cpu", "")[:256] or None,
                   "cores": cores, "ram_mb": None if ram_kb is None else ram_kb // 1024,
                   "os": head.get("os", "")[:256] or "unknown", "python": NATIVE_PYTHON},
        "config": {"threads": threads, "warmup": _int(head.get("warmup")) or 0, "runs": _int(head.get("runs")) or 1,
                   "min_seconds": _float(head.get("min_seconds")) or 0.0, "repeats": 1, "cores": pinned},
        "artifact": {"file": head["artifact"][:255], "sha256": sha or expected, "verified": sha == expected},
        "load_ms": _round(stats["load_ms"]), "first_inference_ms": _round(stats["first_inference_ms"]),
        "latency_ms": {k: reported[k] for k in LATENCY_KEYS} if complete else None,
        "repeats_p90_ms": [reported["p90"]] if complete else [],
        "timed_runs": stats["timed_runs"] or 0,
        "peak_rss_mb": stats["peak_rss_mb"],
        "thermal_c": {"before": None, "after": None}, "cpu_freq_mhz": {"before": None, "after": None},
        "valid": False, "invalid_reason": None, "parity": None,
        "timestamp": stamp if _TIMESTAMP.match(stamp) else
        datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "extra": {"native": {"tool": head["tool"], "reported": reported,
                             "not_reported": [k for k in LATENCY_KEYS if k not in reported],
                             "notes": stats["notes"] + ["one timed block: --repeats and --cooldown-s do not apply"]}},
    }


def _fill_readings(result, head):
    pinned = result["config"]["cores"]
    for when in ("before", "after"):
        temps = []
        for raw in head.get("temp_" + when, "").split():
            value = _float(raw)
            if value is None:
                continue
            value = value / 1000.0 if abs(value) > 1000 else value  # millidegrees on most kernels
            if -40.0 < value < 150.0:
                temps.append(value)
        freqs = []
        for pair in head.get("freq_" + when, "").split():
            cpu, _, khz = pair.partition("=")
            if cpu.isdigit() and _float(khz) is not None and (pinned is None or int(cpu) in pinned):
                freqs.append(_float(khz) / 1000.0)
        result["thermal_c"][when] = round(max(temps), 1) if temps else None
        result["cpu_freq_mhz"][when] = round(sum(freqs) / len(freqs), 1) if freqs else None


def _set_validity(result, head, stats, max_temp_rise_c, max_freq_drop):
    runner = _runner()
    tool = head["tool"]
    reasons = []
    if not result["artifact"]["verified"]:
        reasons.append("not verified: the device's sha256 of %s is %s, the manifest has %s"
                       % (head["artifact"], head["sha256"] or "unavailable", result["artifact"]["sha256"]))
    reasons.append("no parity: %s does not compare outputs with the reference" % tool)
    missing = result["extra"]["native"]["not_reported"]
    if missing:
        reasons.append("incomplete latency: %s does not report %s (what it reports is in extra.native)"
                       % (tool, ", ".join(missing)))
    reasons.append(runner.thermal_reason(result["thermal_c"]["before"], result["thermal_c"]["after"],
                                         max_temp_rise_c))
    reasons.append(runner.frequency_reason(result["cpu_freq_mhz"]["before"], result["cpu_freq_mhz"]["after"],
                                           max_freq_drop))
    result["invalid_reason"] = "; ".join(r for r in reasons if r)[:2000]


def _int(text):
    text = (text or "").strip()
    return int(text) if text.isdigit() and 0 < int(text) < 10 ** 12 else None


def _float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _round(value):
    return None if value is None else round(value, 4)


def _runner():
    """runner.py beside this file (its schema version and validity checks)."""
    module = sys.modules.get("edgeopt_device_runner_for_native")
    if module is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
        spec = importlib.util.spec_from_file_location("edgeopt_device_runner_for_native", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["edgeopt_device_runner_for_native"] = module
    return module


# ---------------------------------------------------------------------------------------------- main


def main(argv=None):
    """Read an envelope on stdin (or --in), print the JSON result; exit 3 for output not understood."""
    p = argparse.ArgumentParser(prog="native.py", description="Parse bench.sh --native output into JSON.")
    p.add_argument("--bundle", default=".", help="bundle folder, for the artifact's sha256 in manifest.json")
    p.add_argument("--in", dest="path", help="read the envelope from this file instead of stdin")
    args = p.parse_args(argv)
    try:
        if args.path:
            with open(args.path) as f:
                text = f.read()
        else:
            text = sys.stdin.read()
        env = parse_envelope(text)
        with open(os.path.join(args.bundle, "manifest.json")) as f:
            artifacts = json.load(f)["artifacts"]
        expected = [a["sha256"] for a in artifacts if a.get("file") == env["header"]["artifact"]]
        if not expected:
            raise NativeOutputError("manifest.json lists no artifact %r" % env["header"]["artifact"])
        result = result_from_envelope(text, expected[0])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:  # RecursionError: a hostile, deep manifest
        print("native.py: %s" % (e if not isinstance(e, RecursionError) else "manifest.json nests too deep"),
              file=sys.stderr)
        return 3
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
