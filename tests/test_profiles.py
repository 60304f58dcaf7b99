"""Device profiles: built-ins load, every class of bad input gives one ProfileError that names the
file, the line, the key path and the fix, and nothing else ever escapes the loader."""

from __future__ import annotations

import copy
import json
import os
import re
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeopt.errors import ProfileError, UsageError
from edgeopt.formats import Precision, Runtime
from edgeopt.detect import DETECT_HEADER
from edgeopt.profiles import (
    Profile,
    builtin_profile_names,
    detect_profile,
    dump_profile_yaml,
    load_builtin_profiles,
    load_profile,
    parse_profile_yaml,
)
from edgeopt.resources import builtin_dir

BUILTINS = ["arm-mobile", "desktop-cpu", "embedded-board", "server-gpu"]

# Line numbers matter: the error cases below name them.
VALID_YAML = """\
schema_version: 1
name: board
description: test board
device:
  arch: arm64
  cores: 4
  ram_gb: 4
limits:
  model_ram_mb: 512
  model_storage_mb: 128
  precisions: [fp32, int8]
compute:
  threads: 4
  fp32_gflops: 75
  int8_gops: 300
  memory_bandwidth_gbps: 10
runtimes: [litert, onnxruntime]
shapes: {batch: 1, seq_len: 128}
targets:
  latency_ms: 100
  fidelity: {min_cosine: 0.99}
"""


@pytest.fixture
def board(tmp_path):
    """Write YAML text (default: the valid board) to tmp/board.yaml and return its path as a string."""

    def write(text: str = VALID_YAML) -> str:
        path = tmp_path / "board.yaml"
        path.write_text(text)
        return str(path)

    return write


def load_error(path: str) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    return str(info.value)


# ---------------------------------------------------------------- built-ins


def test_builtin_names():
    assert builtin_profile_names() == BUILTINS
    assert [p.name for p in load_builtin_profiles()] == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_and_round_trips(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.source == f"builtin:{name}"
    assert profile.schema_version == 1
    assert profile.compute.threads <= profile.device.cores
    assert profile.limits.model_ram_mb <= profile.device.ram_gb * 1024
    assert all(isinstance(p, Precision) for p in profile.limits.precisions)
    assert all(isinstance(r, Runtime) for r in profile.runtimes)
    data = profile.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON-able
    assert Profile.from_dict(data, source=profile.source) == profile
    # and back through YAML text, the way `profiles detect` writes files
    again = Profile.from_dict(parse_profile_yaml(dump_profile_yaml(data, "# copy")), source=profile.source)
    assert again == profile


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_numbers_cite_a_source(name):
    """Every numeric value in a built-in YAML carries a comment saying where it comes from."""
    text = (builtin_dir("profiles") / f"{name}.yaml").read_text()
    numeric = [line for line in text.splitlines() if re.match(r"^\s*\w+:\s*-?[0-9.]+\s*(#|$)", line)]
    uncommented = {line.strip() for line in numeric if "#" not in line}
    assert len(numeric) >= 12
    assert uncommented <= {"schema_version: 1", "batch: 1"}  # nothing to cite for these


def test_arm_mobile_numbers():
    phone = load_profile("arm-mobile")
    assert phone.runtimes == (Runtime.EXECUTORCH, Runtime.LITERT, Runtime.ONNXRUNTIME)
    assert phone.limits.precisions == (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)
    assert (phone.compute.threads, phone.compute.fp32_gflops, phone.compute.int8_gops) == (4, 120.0, 480.0)
    assert (phone.shapes.batch, phone.shapes.seq_len, phone.shapes.context_len) == (1, 128, 512)
    assert phone.targets.latency_ms == 50.0 and phone.targets.fidelity.min_cosine == 0.99
    # the storage budget is chosen so the demo MiniLM-L6 (22.7M params) needs int8 on a phone
    minilm_params = 22.7e6
    assert minilm_params * 2 / 2**20 > phone.limits.model_storage_mb  # fp16 does not fit
    assert minilm_params * 1 / 2**20 < phone.limits.model_storage_mb  # int8 does


def test_download_budget_is_separate_from_the_bundled_one():
    """arm-mobile: a bundled (in-APK) budget of 32 MB and a download budget of 1 GiB, inside Google Play's 1.5 GB
    per-asset-pack limit; the other built-ins have one storage budget (unset means model_storage_mb)."""
    phone = load_profile("arm-mobile")
    assert (phone.limits.model_storage_mb, phone.limits.model_download_mb, phone.limits.download_mb) == (32, 1024, 1024)
    assert phone.limits.model_download_mb <= 1536  # Play Console: individual asset packs <= 1.5 GB compressed
    text = (builtin_dir("profiles") / "arm-mobile.yaml").read_text()
    assert "1.5 GB per asset pack" in text and "9859372" in text  # the limit and where it comes from
    for name in ("desktop-cpu", "embedded-board", "server-gpu"):
        limits = load_profile(name).limits
        assert limits.model_download_mb is None and limits.download_mb == limits.model_storage_mb, name
        assert "model_download_mb" not in load_profile(name).to_dict()["limits"]  # unset stays out of manifests
        assert "no model_download_mb" in (builtin_dir("profiles") / f"{name}.yaml").read_text()  # and says why
    d = phone.to_dict()
    assert d["limits"]["model_download_mb"] == 1024 and Profile.from_dict(d) == Profile.from_dict(phone.to_dict())


def test_download_budget_may_be_null_or_equal(board):
    text = VALID_YAML.replace("model_storage_mb: 128", "model_storage_mb: 128\n  model_download_mb: null")
    assert load_profile(board(text)).limits.model_download_mb is None
    text = VALID_YAML.replace("model_storage_mb: 128", "model_storage_mb: 128\n  model_download_mb: 128")
    assert load_profile(board(text)).limits.download_mb == 128


def test_load_by_path_matches_builtin(tmp_path):
    copy_path = tmp_path / "phone.yaml"
    copy_path.write_bytes((builtin_dir("profiles") / "arm-mobile.yaml").read_bytes())
    by_path, by_str = load_profile(copy_path), load_profile(str(copy_path))
    assert by_path.source == by_str.source == str(copy_path)
    assert by_path.to_dict() == load_profile("arm-mobile").to_dict()


# ---------------------------------------------------------------- names and files


def test_unknown_name_suggests():
    with pytest.raises(ProfileError) as info:
        load_profile("arm-mobil")
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    assert str(info.value).startswith(
        "unknown profile 'arm-mobil'; available: arm-mobile, desktop-cpu, embedded-board, server-gpu; "
        "did you mean 'arm-mobile'?"
    )


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ProfileError, match=f"^profile file not found: {re.escape(missing)}$"):
        load_profile(missing)


def test_directory_and_non_utf8(tmp_path, board):
    assert "is a directory" in load_error(str(tmp_path))
    path = board()
    with open(path, "ab") as f:
        f.write(b"\xff\xfe")
    assert f"{path}: not UTF-8 text (byte offset {len(VALID_YAML)})" in load_error(path)


def test_valid_board_loads(board):
    profile = load_profile(board())
    assert profile.device.ram_gb == 4.0 and profile.compute.memory_bandwidth_gbps == 10.0
    assert profile.shapes.context_len is None and profile.targets.fidelity.max_kl is None


# ---------------------------------------------------------------- YAML-level refusals


def test_syntax_error_names_line_and_column(board):
    path = board(VALID_YAML.replace("precisions: [fp32, int8]", "precisions: [fp32, int8"))
    message = load_error(path)
    assert message.startswith(f"{path}:12:8: YAML syntax error:")
    assert "flow sequence at line 11" in message


def test_python_tag_refused_and_not_run(board, tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("x")
    path = board(VALID_YAML.replace("name: board", f"name: !!python/object/apply:os.remove ['{sentinel}']"))
    message = load_error(path)
    assert message.startswith(f"{path}:2:7: YAML tag !!python/object/apply:os.remove is not allowed")
    assert "remove the tag" in message
    assert sentinel.exists()


def test_alias_bomb_is_refused_fast(board):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    path = board("\n".join(lines) + "\n")
    start = time.perf_counter()
    message = load_error(path)
    assert time.perf_counter() - start < 0.5
    assert message == f"{path}:2:10: YAML alias *a0 is not allowed in a profile (write the value out)"


def test_deep_nesting_and_oversized_file_are_bounded(board):
    path = board("x: " + "[" * 300)
    start = time.perf_counter()
    message = load_error(path)
    assert message.startswith(f"{path}:1:") and "too deep or too large for a profile" in message
    path = board("# padding\n" * 110_000)
    expected = f"{path} is larger than 1 MiB; a profile is a few KB of YAML (is this the right file?)"
    assert load_error(path) == expected
    assert time.perf_counter() - start < 1.5


def test_duplicate_keys_all_reported(board):
    path = board(VALID_YAML.replace("  cores: 4\n", "  cores: 4\n  cores: 8\n") + "name: other\n")
    assert load_error(path) == (
        f"{path}:7:3: duplicate key 'cores' (first written on line 6; keep one)\n"
        f"{path}:23:1: duplicate key 'name' (first written on line 2; keep one)"
    )


@pytest.mark.parametrize("text, expected", [
    ("", "got null (an empty value)"),
    ("- fp32\n- int8\n", "got a list ['fp32', 'int8']"),
    ("just a string\n", "got 'just a string'"),
])
def test_top_level_must_be_a_mapping(board, text, expected):
    path = board(text)
    message = load_error(path)
    assert message.startswith(f"{path}: a profile must be a mapping with keys schema_version, name,")
    assert message.endswith(expected)


# ---------------------------------------------------------------- schema problems, one per class

# case -> (text in VALID_YAML, its replacement, expected "board.yaml" + this)
CASES = {
    "wrong type": (
        "model_ram_mb: 512", "model_ram_mb: 6GB",
        ":9: limits.model_ram_mb must be a positive integer, got '6GB' (write 6144, without quotes"),
    "string number": (
        "memory_bandwidth_gbps: 10", "memory_bandwidth_gbps: 10 GB/s",
        ":16: compute.memory_bandwidth_gbps must be a positive number, got '10 GB/s' (write 10,"),
    "bool for int": (
        "cores: 4", "cores: yes",
        ":6: device.cores must be a positive integer, got true (a boolean) (write a number; YAML reads"),
    "float for int": (
        "threads: 4", "threads: 4.0",
        ":13: compute.threads must be a positive integer, got 4.0 (write 4)"),
    "negative": (
        "model_storage_mb: 128", "model_storage_mb: -128",
        ":10: limits.model_storage_mb must be a positive integer, got -128 (write 128)"),
    "download below bundled": (
        "model_storage_mb: 128", "model_storage_mb: 128\n  model_download_mb: 64",
        ":11: limits.model_download_mb must be at least limits.model_storage_mb = 128, got 64 (a model the app "
        "downloads after install may be larger than one it bundles, not smaller: write 128 or more, or leave the "
        "key out for one storage budget)"),
    "download with unit": (
        "model_storage_mb: 128", "model_storage_mb: 128\n  model_download_mb: 1.5 GB",
        ":11: limits.model_download_mb must be a positive integer, got '1.5 GB' (write 1536, without quotes"),
    "download negative": (
        "model_storage_mb: 128", "model_storage_mb: 128\n  model_download_mb: -1024",
        ":11: limits.model_download_mb must be a positive integer, got -1024 (write 1024)"),
    "download in wrong section": (
        "  ram_gb: 4\n", "  ram_gb: 4\n  model_download_mb: 1024\n",
        ":8: device.model_download_mb is not a known key; allowed here: arch, cores, ram_gb, cpu, isa "
        "(it belongs under limits: move it there)"),
    "zero": (
        "fp32_gflops: 75", "fp32_gflops: 0",
        ":14: compute.fp32_gflops must be a positive number, got 0 (write a number > 0)"),
    "impossible ram": (
        "model_ram_mb: 512", "model_ram_mb: 8192",
        ":9: limits.model_ram_mb must be at most device.ram_gb * 1024 = 4096, got 8192 (a model"),
    "threads > cores": (
        "threads: 4", "threads: 8",
        ":13: compute.threads must be at most device.cores = 4, got 8 (write 4 or fewer"),
    "bad precision": (
        "[fp32, int8]", "[fp32, int9]",
        ":11: limits.precisions[1] must be one of fp32, fp16, int8, int4, got 'int9' (did you mean 'int8'?)"),
    "duplicate precision": (
        "[fp32, int8]", "[fp32, int8, fp32]",
        ":11: limits.precisions[2] repeats 'fp32' (remove the duplicate)"),
    "empty list": (
        "[fp32, int8]", "[]",
        ":11: limits.precisions must be a non-empty list of precisions from fp32, fp16, int8, int4, "
        "got an empty list (write e.g. [fp32, fp16, int8, int4])"),
    "bad runtime": (
        "[litert, onnxruntime]", "[litrt, onnxruntime]",
        ":17: runtimes[0] must be one of executorch, litert, onnxruntime, got 'litrt' (did you mean 'litert'?)"),
    "format for runtime": (
        "[litert, onnxruntime]", "[litert, onnx]",
        ":17: runtimes[1] must be a runtime, got the format 'onnx' (write its runtime 'onnxruntime')"),
    "missing key": (
        "  cores: 4\n", "",
        ":4: device.cores is missing (required: add `cores: 8` under device)"),
    "unknown key": (
        "int8_gops: 300", "int8_gop: 300",
        ":15: compute.int8_gop is not a known key; allowed here: threads, fp32_gflops, int8_gops, "
        "memory_bandwidth_gbps, fp16_gflops, int4_gops, spinning, affinity (did you mean 'int8_gops'?)"),
    "key in wrong section": (
        "  ram_gb: 4\n", "  ram_gb: 4\n  seq_len: 64\n",
        ":8: device.seq_len is not a known key; allowed here: arch, cores, ram_gb, cpu, isa "
        "(it belongs under shapes: move it there)"),
    "schema version": (
        "schema_version: 1", "schema_version: 2",
        ":1: schema_version must be 1, got 2 (this edgeopt reads schema_version 1: write 1, or upgrade"),
    "cosine above 1": (
        "min_cosine: 0.99", "min_cosine: 99",
        ":21: targets.fidelity.min_cosine must be a number in (0, 1], got 99 (write 0.99;"),
    "cosine zero": (
        "min_cosine: 0.99", "min_cosine: 0",
        ":21: targets.fidelity.min_cosine must be a number in (0, 1], got 0 (write e.g. 0.99)"),
    "bad name": (
        "name: board", "name: My Board!",
        ":2: name must be 1-64 characters of a-z, 0-9,"),
    "bad arch": (
        "arch: arm64", "arch: arm65",
        ":5: device.arch must be one of arm64, armv7, riscv64, x86_64, got 'arm65' (did you mean 'arm64'?)"),
    "short context": (
        "seq_len: 128}", "seq_len: 128, context_len: 64}",
        ":18: shapes.context_len must be at least shapes.seq_len = 128, got 64"),
    "section not a mapping": (
        "shapes: {batch: 1, seq_len: 128}", "shapes: 5",
        ":18: shapes must be a mapping with keys batch, seq_len, context_len, got 5"),
    "unknown section": (
        "targets:", "target:",
        ":19: target is not a known key; allowed here: schema_version, name,"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_names_file_line_key_and_fix(board, case):
    old, new, expected = CASES[case]
    assert old in VALID_YAML
    path = board(VALID_YAML.replace(old, new, 1))
    message = load_error(path)
    assert f"{path}{expected}" in message
    assert message.count(path) == message.count("\n") + 1  # every line names the file


def test_all_problems_in_one_exception(board):
    text = VALID_YAML
    for case in ("wrong type", "bool for int", "bad precision", "bad runtime", "unknown key", "cosine above 1"):
        old, new, _ = CASES[case]
        text = text.replace(old, new, 1)
    path = board(text)
    message = load_error(path)
    lines = message.splitlines()
    # unknown key int8_gop also leaves int8_gops missing: 7 problems
    assert lines[0] == f"{path}: 7 problems in this profile:"
    assert [line.split(": ", 2)[1].split(" ")[0] for line in lines[1:]] == [
        "device.cores", "limits.model_ram_mb", "limits.precisions[1]", "compute.int8_gop",
        "compute.int8_gops", "runtimes[0]", "targets.fidelity.min_cosine",
    ]


def test_failed_load_leaves_file_untouched(board):
    path = board(VALID_YAML.replace("cores: 4", "cores: -4"))
    before, mtime = open(path, "rb").read(), os.stat(path).st_mtime_ns
    load_error(path)
    assert open(path, "rb").read() == before and os.stat(path).st_mtime_ns == mtime


def test_from_dict_names_the_dict():
    data = load_profile("desktop-cpu").to_dict()
    data["compute"]["threads"] = 32
    with pytest.raises(ProfileError, match=r"^<dict>: compute.threads must be at most device.cores = 16, got 32"):
        Profile.from_dict(data)


# ---------------------------------------------------------------- detection


def test_detect_profile_validates_and_counts_logical_cores(tmp_path):
    data = detect_profile("ci-box")
    profile = Profile.from_dict(data, source="detected")
    # device.cores is the logical CPU count; threads and the FLOP estimate use physical cores
    assert profile.device.cores == psutil.cpu_count(logical=True)
    assert profile.compute.threads == min(psutil.cpu_count(logical=False) or profile.device.cores,
                                          profile.device.cores)
    assert profile.limits.model_ram_mb == int(psutil.virtual_memory().total / 2**20 * 0.25)
    assert profile.compute.int8_gops in (2 * profile.compute.fp32_gflops, 4 * profile.compute.fp32_gflops)
    assert 0.1 < profile.compute.memory_bandwidth_gbps < 2000
    expected_first = Runtime.EXECUTORCH if profile.device.arch.startswith("arm") else Runtime.ONNXRUNTIME
    assert profile.runtimes[0] == expected_first
    text = dump_profile_yaml(data, header=DETECT_HEADER)
    assert text.startswith("# edgeopt device profile written by `edgeopt profiles detect`.")
    path = tmp_path / "ci-box.yaml"
    path.write_text(text)
    assert load_profile(path) == Profile.from_dict(data, source=str(path))


def test_detect_profile_rejects_bad_name():
    with pytest.raises(ProfileError, match=r"name must be 1-64 characters.*\(write my-laptop\)"):
        detect_profile("My Laptop")


# ---------------------------------------------------------------- fuzzing: only ProfileError escapes

VALID_DICT = Profile.from_dict(parse_profile_yaml(VALID_YAML)).to_dict()


def _paths(node, prefix=()):
    for key, value in node.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _paths(value, prefix + (key,))


PATHS = list(_paths(VALID_DICT))
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
           | st.sampled_from(["fp32", "int8", "onnx", "litert", "6GB", "1e3", "arm64", "", "0.99", -(2**60)])
           | st.builds(pow, st.just(10), st.just(5000)))  # past Python's int->str limit
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6) | st.integers() | st.none(), inner, max_size=3),
                      max_leaves=6)
new_keys = st.sampled_from(["threads", "cpu", "x", "batch", "fidelity"]) | st.text(max_size=5)
operations = st.sampled_from(["set", "delete", "add"])
mutations = st.lists(st.tuples(st.sampled_from(PATHS), operations, values, new_keys), min_size=1, max_size=4)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_fuzz_dict_mutations_load_or_raise_profile_error(changes):
    data = copy.deepcopy(VALID_DICT)
    for path, op, value, new_key in changes:
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if op == "set":
            parent[path[-1]] = value
        elif op == "delete":
            parent.pop(path[-1], None)
        else:
            parent[new_key] = value
    try:
        profile = Profile.from_dict(data, source="fuzz.yaml")
    except ProfileError as e:
        assert str(e).startswith("fuzz.yaml")
    else:
        assert Profile.from_dict(profile.to_dict(), source="fuzz.yaml") == profile


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(VALID_YAML)), st.integers(0, 6), st.text(max_size=8))
def test_fuzz_yaml_text_edits_load_or_raise_profile_error(position, cut, inserted):
    text = VALID_YAML[:position] + inserted + VALID_YAML[position + cut:]
    try:
        Profile.from_dict(parse_profile_yaml(text, "fuzz.yaml"), source="fuzz.yaml")
    except ProfileError as e:
        assert str(e).startswith("fuzz.yaml")


def test_threading_keys_default_off_and_none_and_are_checked(board):
    plain = load_profile(board())
    assert (plain.compute.spinning, plain.compute.affinity) == (False, "none")
    text = VALID_YAML.replace("  memory_bandwidth_gbps: 10\n",
                              "  memory_bandwidth_gbps: 10\n  spinning: true\n  affinity: fastest\n", 1)
    set_ = load_profile(board(text))
    assert (set_.compute.spinning, set_.compute.affinity) == (True, "fastest")
    assert set_.to_dict()["compute"]["affinity"] == "fastest"
    bad = VALID_YAML.replace("  memory_bandwidth_gbps: 10\n",
                             "  memory_bandwidth_gbps: 10\n  spinning: \"no\"\n  affinity: big\n", 1)
    message = load_error(board(bad))
    assert "compute.spinning must be true or false, got 'no' (write true or false, without quotes)" in message
    assert "compute.affinity must be one of none, fastest, got 'big'" in message


def test_builtin_threading_choices():
    by_name = {p.name: p for p in load_builtin_profiles()}
    assert by_name["arm-mobile"].compute.affinity == "fastest"  # big.LITTLE: the big cores
    assert all(not p.compute.spinning for p in by_name.values())


def test_device_isa_is_checked_and_detect_names_the_hosts(board):
    text = VALID_YAML.replace("  ram_gb: 4\n", "  ram_gb: 4\n  isa: [neon, DotProd, neon]\n", 1)
    assert load_profile(board(text)).device.isa == ("neon", "dotprod")  # lower-cased, duplicates dropped
    assert "isa" not in load_profile(board()).to_dict()["device"]  # unset: left out, as before the key
    bad = VALID_YAML.replace("  ram_gb: 4\n", "  ram_gb: 4\n  isa: [avx512vnni]\n", 1)
    assert "device.isa names an unknown CPU feature 'avx512vnni' (did you mean 'avx512_vnni'?" in load_error(board(bad))
    from edgeopt.detect import isa_features

    assert isa_features({"avx2", "fma", "avx512f", "avx512_vnni", "sse4_2"}) == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert isa_features({"asimd", "asimddp", "asimdhp", "i8mm"}) == ["neon", "dotprod", "i8mm", "fp16"]
