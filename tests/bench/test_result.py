"""parse_result treats the device's JSON as untrusted: every bad input is a DeviceError that says what was wrong."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeopt.benchmark import BenchResult, format_table, load_schema, parse_result
from edgeopt.errors import DeviceError
from edgeopt.resources import builtin_dir

SHA = "ab" * 32
VALID = {
    "schema_version": 1,
    "runtime": {"name": "onnxruntime", "version": "1.31.1"},
    "device": {"machine": "aarch64", "cpu": "Cortex-A76", "cores": 8, "ram_mb": 7700, "os": "Linux-6.1-aarch64",
               "python": "3.9.18"},
    "config": {"threads": 4, "warmup": 10, "runs": 100, "min_seconds": 5.0, "max_seconds": 60.0, "repeats": 3,
               "cooldown_s": 1.0, "cores": [4, 5, 6, 7], "max_spread": 0.15, "max_temp_rise_c": 15.0,
               "max_freq_drop": 0.15},
    "artifact": {"file": "model.onnx", "sha256": SHA, "verified": True},
    "load_ms": 120.5, "first_inference_ms": 30.25,
    "latency_ms": {"mean": 12.5, "std": 0.75, "min": 11.0, "p50": 12.25, "p90": 13.5, "p99": 15.0, "max": 16.0},
    "repeats_p90_ms": [13.4, 13.5, 13.6], "timed_runs": 300,
    "peak_rss_mb": 210.5, "thermal_c": {"before": 41.0, "after": 47.5},
    "cpu_freq_mhz": {"before": 2400.0, "after": 2350.0},
    "valid": True, "invalid_reason": None,
    "parity": {"reference": "fp32", "max_abs_err": 0.0123, "min_cosine": 0.9991, "mean_cosine": 0.9996,
               "host_max_abs_err": 1.5e-06, "samples": 8},
    "timestamp": "2026-01-02T03:04:05+00:00",
}


def valid() -> dict:
    return copy.deepcopy(VALID)


def dumps(value) -> str:
    return json.dumps(value)


def test_valid_result_parses_into_fields():
    r = parse_result(dumps(valid()))
    assert (r.runtime, r.runtime_version, r.artifact_file, r.artifact_sha256) == ("onnxruntime", "1.31.1",
                                                                                 "model.onnx", SHA)
    assert r.verified is True and r.valid is True and r.invalid_reason is None
    assert (r.load_ms, r.first_inference_ms, r.peak_rss_mb) == (120.5, 30.25, 210.5)
    assert r.latency_ms["p90"] == 13.5 and r.parity["min_cosine"] == 0.9991


def test_round_trips_through_json_and_bytes():
    r = parse_result(dumps(valid()).encode())
    assert r.to_dict() == VALID
    assert parse_result(json.dumps(r.to_dict())) == r
    assert BenchResult.from_dict(r.to_dict()) == r
    r.to_dict()["latency_ms"]["p50"] = -1  # to_dict hands out a copy: the result stays as parsed
    assert r.latency_ms["p50"] == 12.25


def test_extra_object_is_allowed_but_other_keys_are_not():
    data = valid()
    data["extra"] = {"governor": "performance"}
    assert parse_result(dumps(data)).to_dict()["extra"] == {"governor": "performance"}
    data["latency"] = 3
    with pytest.raises(DeviceError, match=r"at \(top level\): Additional properties are not allowed \('latency'"):
        parse_result(dumps(data))


def test_truncated():
    text = dumps(valid())
    with pytest.raises(DeviceError, match=r"bench result is truncated JSON \(it ends early\)"):
        parse_result(text[: len(text) // 2])


def test_oversized():
    with pytest.raises(DeviceError, match=r"bench result is larger than 1000 bytes \(\d+\)"):
        parse_result(dumps(valid()), max_bytes=1000)


@pytest.mark.parametrize(("text", "message"), [
    ("", "bench result is empty: the runner printed nothing on stdout"),
    ("Segmentation fault", "bench result is not JSON: Expecting value at line 1 column 1"),
    (b"\xff\xfe{}", r"bench result is not UTF-8 text \(byte 0\)"),
    ("[1, 2]", "bench result must be a JSON object, got an array"),
    ("[" * 100_000, "bench result nests deeper than 32 levels"),  # measured on the text, before json.loads
    ('{"a":' * 40 + "1" + "}" * 40, "bench result nests deeper than 32 levels"),
])
def test_not_a_result(text, message):
    with pytest.raises(DeviceError, match=message):
        parse_result(text)


def test_not_text():
    with pytest.raises(DeviceError, match="bench result must be text or bytes, got dict"):
        parse_result(valid())  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(token):
    text = dumps(valid()).replace('"p50": 12.25', f'"p50": {token}')
    with pytest.raises(DeviceError, match=f"it contains {token}, which is not a measurement"):
        parse_result(text)


def test_overflowing_float_is_refused():
    text = dumps(valid()).replace('"load_ms": 120.5', '"load_ms": 1e999')
    with pytest.raises(DeviceError, match="the number 1e999 is not finite"):
        parse_result(text)


def set_path(data: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("latency_ms.p50", "fast", "at latency_ms.p50: 'fast' is not of type 'number'"),
    ("latency_ms.min", -1.0, "at latency_ms.min: -1.0 is less than the minimum of 0"),
    ("valid", "yes", "at valid: 'yes' is not of type 'boolean'"),
    ("timed_runs", True, "at timed_runs: True is not of type 'integer'"),
    ("schema_version", 2, "at schema_version: 1 was expected"),
    ("artifact.sha256", "XYZ", "at artifact.sha256: 'XYZ' does not match"),
    ("runtime.name", "../../etc", r"at runtime.name: '../../etc' does not match"),
    ("parity.min_cosine", 1.5, "at parity.min_cosine: 1.5 is greater than the maximum of 1"),
    ("config.cores", [0, -1], r"at config.cores.1: -1 is less than the minimum of 0"),
    ("invalid_reason", "x" * 3000, "at invalid_reason: 'xxxx"),
])
def test_wrong_types_and_bounds(path, value, message):
    with pytest.raises(DeviceError, match="bench result does not match the runner schema " + message):
        parse_result(dumps(set_path(valid(), path, value)))


@pytest.mark.parametrize("key", ["valid", "latency_ms", "parity", "artifact", "schema_version"])
def test_missing_keys(key):
    data = valid()
    del data[key]
    with pytest.raises(DeviceError, match=rf"at \(top level\): '{key}' is a required property"):
        parse_result(dumps(data))


def test_valid_result_must_be_verified_and_measured():
    with pytest.raises(DeviceError, match="at artifact.verified: True was expected"):
        parse_result(dumps(set_path(valid(), "artifact.verified", False)))
    with pytest.raises(DeviceError, match="at latency_ms: None is not of type 'object'"):
        parse_result(dumps(set_path(valid(), "latency_ms", None)))
    with pytest.raises(DeviceError, match="at invalid_reason: None is not of type 'string'"):
        parse_result(dumps(set_path(valid(), "valid", False)))


def test_invalid_result_with_reason_parses():
    data = set_path(valid(), "valid", False)
    data["invalid_reason"] = "unstable: p90 across repeats spread 23% > 15%"
    r = parse_result(dumps(data))
    assert r.valid is False and r.invalid_reason.startswith("unstable")
    assert "NO: unstable: p90 across repeats spread 23% > 15%" in format_table(r)


def test_latency_out_of_order_is_refused():
    with pytest.raises(DeviceError, match=r"at latency_ms: need min <= p50 <= p90 <= p99 <= max .* p90=20.0"):
        parse_result(dumps(set_path(valid(), "latency_ms.p90", 20.0)))


def test_error_messages_quote_untrusted_values_briefly():
    with pytest.raises(DeviceError) as info:
        parse_result(dumps(set_path(valid(), "device.cpu", "A" * 5000)))
    assert "at device.cpu" in str(info.value) and len(str(info.value)) < 300


def test_load_schema_is_the_runner_file():
    schema = load_schema()
    assert schema == json.loads((builtin_dir("runtimes") / "common" / "result_schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    schema["required"].clear()  # a caller's copy: the validator keeps its own
    assert "valid" in load_schema()["required"]


def test_format_table_numbers():
    table = format_table(parse_result(dumps(valid())))
    assert table.splitlines() == [
        "runtime              onnxruntime 1.31.1",
        "artifact             model.onnx (sha256 verified)",
        "load                 120.500 ms",
        "first inference      30.250 ms",
        "latency p50/p90/p99  12.250 / 13.500 / 15.000 ms  (300 runs, mean 12.500 ± 0.750)",
        "peak RSS             210.5 MB",
        "parity vs fp32       min cosine 0.999100, max abs err 0.0123  (8 samples)",
        "valid                yes",
    ]


def test_import_is_light():
    code = ("import sys, edgeopt.benchmark; heavy = {'torch', 'onnxruntime', 'numpy', 'jsonschema'} & "
            "{m.split('.')[0] for m in sys.modules}; print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_device_error(text) -> BenchResult | None:
    try:
        return parse_result(text)
    except DeviceError:
        return None


@FUZZ
@given(json_values)
def test_fuzz_random_json_never_raises_anything_else(value):
    assert parse_or_device_error(json.dumps(value)) is None


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_never_raise_anything_else(data):
    assert parse_or_device_error(data) is None


def all_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from all_paths(v, prefix + (k,))


PATHS = list(all_paths(VALID))[1:]


@FUZZ
@given(st.sampled_from(PATHS), json_values, st.booleans())
def test_fuzz_mutated_results_parse_or_raise_device_error(path, value, delete):
    data = valid()
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    result = parse_or_device_error(json.dumps(data))
    if result is not None:  # a mutation the schema allows must still round-trip
        assert result.to_dict() == data


@FUZZ
@given(st.integers(min_value=0, max_value=len(json.dumps(VALID)) - 1))
def test_fuzz_truncated_results_raise_device_error(cut):
    assert parse_or_device_error(json.dumps(VALID)[:cut]) is None
