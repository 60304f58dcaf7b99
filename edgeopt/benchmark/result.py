"""The device runner's JSON result, parsed on the host as untrusted input.

The shape is ``runtimes/common/result_schema.json``, the same file the device runner writes to.
Anything that does not match (too large, truncated, not JSON, NaN, wrong types, missing keys,
numbers out of bounds) is a ``DeviceError``: a broken device or transport never becomes a latency.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from edgeopt.errors import DeviceError
from edgeopt.resources import builtin_dir

MAX_RESULT_BYTES = 1_000_000
MAX_DEPTH = 32  # the runner nests 3 levels; deeper input is hostile and would exhaust recursion later
_LATENCY_ORDER = ("min", "p50", "p90", "p99", "max")
_SHOWN_CHARS = 120  # how much of an untrusted value an error message quotes


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run of one artifact on one device (``raw`` is the whole validated JSON object)."""

    runtime: str
    runtime_version: str | None
    artifact_file: str
    artifact_sha256: str
    verified: bool
    valid: bool
    invalid_reason: str | None
    load_ms: float | None
    first_inference_ms: float | None
    peak_rss_mb: float | None
    latency_ms: dict[str, float] | None = field(hash=False)
    parity: dict[str, Any] | None = field(hash=False)
    raw: dict[str, Any] = field(hash=False, repr=False)
    # Set by ``edgeopt.api.bench``: the stored form (device, bundle, result, comparison) and where it went.
    record: dict[str, Any] | None = field(default=None, hash=False, repr=False, compare=False)
    saved_to: str | None = field(default=None, compare=False)

    @property
    def comparison(self) -> dict[str, Any] | None:
        """Measured vs the plan's estimates and the profile's target (see ``edgeopt.benchmark.compare``)."""
        return self.record.get("comparison") if self.record else None

    def to_dict(self) -> dict[str, Any]:
        """The result as the runner's JSON object (``parse_result(json.dumps(r.to_dict())) == r``)."""
        return copy.deepcopy(self.raw)

    @classmethod
    def from_dict(cls, data: Any) -> BenchResult:
        """Validate an already-decoded JSON value; raises ``DeviceError`` like ``parse_result``."""
        _validate(data)
        return cls(
            runtime=data["runtime"]["name"],
            runtime_version=data["runtime"]["version"],
            artifact_file=data["artifact"]["file"],
            artifact_sha256=data["artifact"]["sha256"],
            verified=data["artifact"]["verified"],
            valid=data["valid"],
            invalid_reason=data["invalid_reason"],
            load_ms=data["load_ms"],
            first_inference_ms=data["first_inference_ms"],
            peak_rss_mb=data["peak_rss_mb"],
            latency_ms=copy.deepcopy(data["latency_ms"]),
            parity=copy.deepcopy(data["parity"]),
            raw=copy.deepcopy(data),
        )


def load_schema() -> dict[str, Any]:
    """The runner result's JSON Schema (draft 2020-12), read from the built-in runtimes folder."""
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    path = builtin_dir("runtimes") / "common" / "result_schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema  # imported here: `import edgeopt` stays light

    return jsonschema.Draft202012Validator(_schema())


def parse_result(text: str | bytes, max_bytes: int = MAX_RESULT_BYTES) -> BenchResult:
    """Parse the runner's stdout (one JSON object) into a ``BenchResult``.

    Args:
        text: what the device printed, as text or bytes; surrounding whitespace is ignored.
        max_bytes: larger input is refused before it is decoded.

    Raises:
        DeviceError: for input that is too large, not UTF-8, empty, truncated, not JSON, holds
            NaN/Infinity, or does not match ``result_schema.json`` (the message names the first bad key).
    """
    data = _decode(text, max_bytes)
    return BenchResult.from_dict(data)


def _decode(text: str | bytes, max_bytes: int) -> Any:
    if isinstance(text, str):
        raw = text.encode("utf-8", errors="surrogatepass")
    elif isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
    else:
        raise DeviceError(f"bench result must be text or bytes, got {type(text).__name__}")
    if len(raw) > max_bytes:
        raise DeviceError(f"bench result is larger than {max_bytes} bytes ({len(raw)}); "
                          "the device printed something other than one runner result")
    try:
        decoded = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DeviceError(f"bench result is not UTF-8 text (byte {e.start}); the transport corrupted it") from None
    if not decoded:
        raise DeviceError("bench result is empty: the runner printed nothing on stdout")
    from edgeopt.jsonio import nesting_depth

    if nesting_depth(decoded) > MAX_DEPTH:  # measured on the text: json.loads would recurse once per level
        raise DeviceError(f"bench result nests deeper than {MAX_DEPTH} levels; it is not a runner result")
    try:
        data = json.loads(decoded, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        # A string cut off by a dropped transfer is reported where the string started, not at the end.
        truncated = e.pos >= len(decoded) - 1 or e.msg.startswith("Unterminated string")
        what = "truncated JSON (it ends early)" if truncated else "not JSON"
        raise DeviceError(f"bench result is {what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise DeviceError(f"bench result is not usable JSON: {_short(str(e) or type(e).__name__)}") from None
    if _depth(data) > MAX_DEPTH:
        raise DeviceError(f"bench result nests deeper than {MAX_DEPTH} levels; it is not a runner result")
    return data


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"it contains {name}, which is not a measurement")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {_short(text)} is not finite")
    return value


def _validate(data: Any) -> None:
    if not isinstance(data, dict):
        raise DeviceError(f"bench result must be a JSON object, got {_json_type(data)}")
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise DeviceError(f"bench result does not match the runner schema at {where}: {_short(error.message)}")
    _check_latency_order(data["latency_ms"])


def _check_latency_order(latency: dict[str, float] | None) -> None:
    # The schema cannot relate two numbers; percentiles out of order mean the numbers were not measured.
    if latency is None:
        return
    values = [latency[k] for k in _LATENCY_ORDER]
    if values != sorted(values) or not latency["min"] <= latency["mean"] <= latency["max"]:
        shown = ", ".join(f"{k}={latency[k]}" for k in ("mean",) + _LATENCY_ORDER)
        raise DeviceError(f"bench result at latency_ms: need min <= p50 <= p90 <= p99 <= max and mean within "
                          f"[min, max], got {shown}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def format_table(result: BenchResult) -> str:
    """A plain-text table of one result: load, first inference, percentiles, memory, parity, validity."""
    rows = [
        ("runtime", f"{result.runtime} {result.runtime_version or '(version unknown)'}"),
        ("artifact", f"{result.artifact_file} (sha256 {'verified' if result.verified else 'MISMATCH'})"),
        ("load", _ms(result.load_ms)),
        ("first inference", _ms(result.first_inference_ms)),
    ]
    lat = result.latency_ms
    if lat is not None:
        runs = result.raw.get("timed_runs")
        rows.append(("latency p50/p90/p99", f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} ms"
                                            f"  ({runs} runs, mean {lat['mean']:.3f} ± {lat['std']:.3f})"))
    else:
        rows.append(("latency p50/p90/p99", "-"))
    rows.append(("peak RSS", "-" if result.peak_rss_mb is None else f"{result.peak_rss_mb:.1f} MB"))
    gen, quality = result.raw.get("generation"), result.raw.get("lm_quality")
    if gen:  # a decoder LM: latency above is per decode step
        rows[-2] = ("decode step p50/p90/p99", rows[-2][1])
        rows[3] = ("time to first token", _ms(gen["ttft_ms"]) + f"  (prompt {gen['prompt_tokens']} tokens)")
        rows.append(("tokens/s", f"prefill {_rate(gen['prefill_tokens_per_s'])}, decode {_rate(gen['decode_tokens_per_s'])}"
                                 f"  ({gen['generations']} generations of {gen['new_tokens']} tokens)"))
    if quality:
        host = quality["host_greedy_agreement"]
        rows.append(("LM vs fp32", f"perplexity {quality['perplexity']:.3f} vs {quality['reference_perplexity']:.3f} "
                                   f"(x{quality['perplexity_ratio']:.4f}), greedy tokens "
                                   f"{quality['greedy_agreement']:.0%} equal"
                                   + (f" ({host:.0%} equal to the host's)" if host is not None else "")))
    par = result.parity
    if quality:
        pass
    elif par is not None:
        rows.append(("parity vs fp32", f"min cosine {par['min_cosine']:.6f}, max abs err {par['max_abs_err']:.3g}"
                                       f"  ({par['samples']} samples)"))
    else:
        rows.append(("parity vs fp32", "-"))
    tok = result.raw.get("tokenizer")
    if tok:
        rows.append(("tokenizer", _tokenizer_row(tok)))
    rows.append(("valid", "yes" if result.valid else f"NO: {result.invalid_reason}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _tokenizer_row(tok: dict[str, Any]) -> str:
    """The golden-ids check of the bundle's tokenizer on the device (the result's ``tokenizer`` object)."""
    files = " (tokenizer files DIFFER from the manifest's sha256)" if tok["files_verified"] is False else ""
    if not tok["checked"]:
        return f"golden ids NOT checked: {tok['reason']}{files}"
    if tok["ok"]:
        return f"ids equal to golden.json on {tok['ids_equal']}/{tok['texts']} texts{files}"
    return f"MISMATCH: {tok['texts'] - tok['ids_equal']}/{tok['texts']} golden texts give other ids{files}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"
