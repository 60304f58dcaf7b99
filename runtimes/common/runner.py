#!/usr/bin/env python3
"""edgeopt device benchmark runner: load one artifact of a bundle, time it, check parity, print JSON.

Runs ON THE DEVICE with Python 3.9+, the standard library, numpy and the artifact's runtime only
(no torch, no edgeopt). It is copied into every bundle as ``runner/common/runner.py``; the runtime
adapters sit beside it as ``runner/<runtime>/backend.py``.

    python3 runner/common/runner.py --bundle DIR [--runtime NAME] [--artifact FILE] [--threads N]
        [--cores 0,1,2,3] [--warmup 10] [--runs 100] [--min-seconds 5] [--repeats 3] [--seq-len N]
        [--out result.json]

A text encoder exported with variable lengths (manifest ``lengths``: dynamic, or buckets) runs as an app
sends it: each stored sample trimmed to its real length (from the attention mask) and run at that length or
the smallest bucket that holds it; ``--seq-len N`` times every run at N tokens instead.

stdout carries exactly one JSON object (the shape is ``result_schema.json``); logs go to stderr.
Every file of the bundle is checked against the manifest's ``files`` (sha256) before anything of it is loaded:
a changed, missing or unlisted file, a symlink leaving the bundle or a ``../`` name is exit 3 naming it.

Exit codes: 0 measured (read ``valid``) · 2 bad flags · 3 artifact or bundle file missing, unreadable, unlisted or
failing its sha256, or a manifest too large or too deeply nested (a result with ``valid: false`` is still printed
for an artifact sha256 mismatch) · 4 runtime, numpy or the runner for the runtime not installed, or the runtime
cannot load/run the verified artifact, or crashed on it.

Before it times an encoder artifact, the runner loads it and runs it once in a forked child process (where the OS
has fork): a runtime that crashes natively on a corrupt artifact (SIGSEGV, abort) then ends that child, and the
runner reports it as exit 4, instead of dying without a result. ``EDGEOPT_RUNNER_PROBE=0`` skips the probe.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
import types
from array import array
from contextlib import contextmanager

# The runner loads only files it verified: no byte code cache is written into the bundle, and none is read
# (backend.py, lmeval.py and generate.py are compiled from their checked sources, see load_source_module).
sys.dont_write_bytecode = True

try:  # numpy is required, but its absence must be an exit-4 message, not a traceback
    import numpy as np
except ImportError:  # pragma: no cover - exercised on devices without numpy
    np = None

SCHEMA_VERSION = 1
EXIT_OK, EXIT_USAGE, EXIT_BAD_FILE, EXIT_UNSUPPORTED = 0, 2, 3, 4
RUNNER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Which pip package provides each runtime, for the "not installed" message when a backend lacks `pip_package`.
PIP_PACKAGES = {"onnxruntime": "onnxruntime", "executorch": "executorch", "litert": "ai-edge-litert"}
FORMAT_RUNTIMES = {"onnx": "onnxruntime", "pte": "executorch", "tflite": "litert"}
_RUNTIME_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Bounds on JSON read from the bundle (the host's edgeopt/jsonio.py, kept standalone here): json.loads recurses
# once per nesting level, so a 200,000-deep "[[[..." would be a RecursionError instead of a clear exit 3.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_FILES = 10000
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
MANIFEST = "manifest.json"
RESULTS_DIR = "results"


class RunnerExit(Exception):
    """Stop with an exit code and a one-line message (and, for a sha256 mismatch, a result object)."""

    def __init__(self, code, message, result=None):
        super().__init__(message)
        self.code = code
        self.result = result


def log(message):
    print("runner: " + message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- flags


def parse_args(argv):
    """Parse the command line; argparse exits 2 on bad flags."""
    p = argparse.ArgumentParser(prog="runner.py", description="Benchmark one artifact of an edgeopt bundle.")
    p.add_argument("--bundle", required=True, help="bundle folder (holds manifest.json)")
    p.add_argument("--runtime", help="runtime of the artifact to run (default: the first artifact's)")
    p.add_argument("--artifact", help="artifact file name from the manifest (wins over --runtime)")
    p.add_argument("--threads", type=_positive_int, help="runtime threads (default: the profile's, capped to cores)")
    p.add_argument("--spin", choices=("on", "off"),
                   help="onnxruntime: let idle intra-op threads spin (session.intra_op.allow_spinning; default: the "
                        "profile's compute.spinning, else the runtime's, on)")
    p.add_argument("--cores", type=_core_list, help="pin to these CPU ids, e.g. 4,5,6,7 (Linux/Android; default: the "
                                                    "profile's compute.affinity: 'fastest' pins to the fastest cores)")
    p.add_argument("--warmup", type=_non_negative_int, default=10, help="untimed runs before each repeat")
    p.add_argument("--runs", type=_positive_int, default=100, help="minimum timed runs per repeat")
    p.add_argument("--min-seconds", type=_non_negative_float, default=5.0, help="minimum timed seconds per repeat")
    p.add_argument("--max-seconds", type=_non_negative_float, default=60.0,
                   help="hard cap on one repeat's timed seconds, so a slow device ends (default 60)")
    p.add_argument("--max-runs", type=_positive_int, default=100000,
                   help="hard cap on one repeat's timed runs, bounding memory for very fast models")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed blocks, compared for stability")
    p.add_argument("--cooldown-s", type=_non_negative_float, default=1.0, help="sleep between repeats")
    p.add_argument("--max-spread", type=_non_negative_float, default=0.15,
                   help="invalid when the repeats' p90 differ by more than this fraction of the lowest")
    p.add_argument("--max-temp-rise-c", type=_non_negative_float, default=15.0,
                   help="invalid when the hottest thermal zone rose by more than this many degrees C")
    p.add_argument("--max-freq-drop", type=_non_negative_float, default=0.15,
                   help="invalid when the mean CPU frequency fell by more than this fraction")
    p.add_argument("--seq-len", type=_positive_int,
                   help="text encoders with variable lengths: time every run at this many tokens (default: the "
                        "stored samples in turn, each at its real length)")
    p.add_argument("--new-tokens", type=_positive_int, default=64,
                   help="decoder LMs: tokens generated per timed generation (capped by the KV cache)")
    p.add_argument("--out", help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.max_seconds < args.min_seconds:
        p.error("--max-seconds (%g) must be at least --min-seconds (%g)" % (args.max_seconds, args.min_seconds))
    return args


def _positive_int(text):
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %r" % text)
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number, got %r" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative, got %r" % text)
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number, got %r" % text) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number >= 0, got %r" % text)
    return value


def _core_list(text):
    try:
        cores = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("must be CPU ids separated by commas, e.g. 0,1,2,3; got %r" % text) from None
    if not cores or cores[0] < 0:
        raise argparse.ArgumentTypeError("must list CPU ids >= 0, e.g. 0,1,2,3; got %r" % text)
    return cores


# ------------------------------------------------------------------------------- manifest and files


def json_depth(text):
    """Deepest ``[``/``{`` nesting of JSON text, counting brackets outside strings; no recursion."""
    if text.count("[") + text.count("{") == 0:
        return 0
    depth = deepest = 0
    for c in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def read_json(path, max_bytes=MAX_JSON_BYTES, max_depth=MAX_JSON_DEPTH):
    """A bundle's JSON file, bounded in size and nesting before it is parsed.

    Raises OSError (unreadable) or ValueError (too large, not UTF-8, too deep, not JSON), the message saying which.
    """
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError("larger than %d bytes" % max_bytes)
    text = data.decode("utf-8")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError("nests %d levels deep, more than the %d allowed (hostile or corrupt input)"
                         % (depth, max_depth))
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nests too deep to parse (hostile or corrupt input)") from None


def load_manifest(bundle):
    """Read ``manifest.json``; anything missing or malformed is exit 3 naming the key."""
    path = os.path.join(bundle, MANIFEST)
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as e:
        raise RunnerExit(EXIT_BAD_FILE, "cannot read %s: %s" % (path, e)) from None
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(artifacts, list) or not artifacts:
        raise RunnerExit(EXIT_BAD_FILE, "%s: 'artifacts' must be a non-empty list" % path)
    for i, art in enumerate(artifacts):
        _check_artifact_entry(path, i, art)
    return manifest


def _check_artifact_entry(path, index, art):
    where = "%s: artifacts[%d]" % (path, index)
    if not isinstance(art, dict):
        raise RunnerExit(EXIT_BAD_FILE, "%s must be an object" % where)
    name = art.get("file")
    # The file name comes from a file we did not write on this device: keep it inside the bundle.
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
        raise RunnerExit(EXIT_BAD_FILE, "%s.file must be a plain file name inside the bundle, got %r" % (where, name))
    if not isinstance(art.get("sha256"), str) or not _SHA256.match(art["sha256"]):
        raise RunnerExit(EXIT_BAD_FILE, "%s.sha256 must be 64 lowercase hex digits" % where)
    for key in ("inputs", "outputs"):
        specs = art.get(key)
        if not isinstance(specs, list) or not specs:
            raise RunnerExit(EXIT_BAD_FILE, "%s.%s must be a non-empty list of {name, dtype, shape}" % (where, key))
        for spec in specs:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise RunnerExit(EXIT_BAD_FILE, "%s.%s entries need a string 'name'" % (where, key))


def artifact_runtime(art):
    """The runtime an artifact entry names, else the one its format implies."""
    if isinstance(art.get("runtime"), str):
        return art["runtime"]
    return FORMAT_RUNTIMES.get(art.get("format"), "")


def pick_artifact(manifest, file_name, runtime):
    """The artifact named by ``--artifact``, else the first for ``--runtime``, else the first; exit 2 if absent."""
    artifacts = manifest["artifacts"]
    if file_name is not None:
        found = [a for a in artifacts if a["file"] == file_name]
        what = "artifact %r" % file_name
    elif runtime is not None:
        found = [a for a in artifacts if artifact_runtime(a) == runtime]
        what = "artifact for runtime %r" % runtime
    else:
        found = artifacts[:1]
        what = "artifact"
    if not found:
        have = ", ".join("%s (%s)" % (a["file"], artifact_runtime(a)) for a in artifacts)
        raise RunnerExit(EXIT_USAGE, "no %s in this bundle; it has: %s" % (what, have))
    return found[0]


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB chunks; an unreadable file is exit 3."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise RunnerExit(EXIT_BAD_FILE, "cannot read %s: %s" % (path, e)) from None
    return digest.hexdigest()


def verify_file(bundle, name, expected):
    """(actual sha256, mismatch reason or None) for a bundle file against the manifest's hash."""
    actual = sha256_file(os.path.join(bundle, name))
    if actual != expected:
        return actual, "sha256 mismatch: manifest %s, file %s" % (expected, actual)
    return actual, None


# ------------------------------------------------------------------------------------------ every bundle file


def _never_copied(parts):
    """Paths the host never copies to a device and this runner never loads: the manifest, stored results,
    Python byte code caches (this runner neither writes nor reads them)."""
    return (parts == (MANIFEST,) or parts[0] == RESULTS_DIR or "__pycache__" in parts
            or parts[-1].endswith(".pyc"))


def listed_name_problem(name):
    """Why a key of the manifest's ``files`` is not a safe bundle path, or None."""
    if not isinstance(name, str) or not name or len(name) > 1000:
        return "is not a file name"
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path; the manifest names files inside the bundle only"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out of the bundle with '..'; the manifest names files inside the bundle only"
    if any(p in ("", ".") for p in parts) or any(ord(c) < 32 for c in name):
        return "is not a plain relative path (empty or '.' parts, control characters)"
    if _never_copied(tuple(parts)):
        return "names a file a bundle never lists (the manifest, results/, byte code)"
    return None


def bundle_files(bundle):
    """{relative POSIX path: path} of every file of the bundle (``_never_copied`` ones left out); a symlink that
    leaves the bundle, or points to a folder or a special file, is exit 3."""
    real_root = os.path.realpath(bundle)
    found = {}
    for folder, dirs, names in os.walk(bundle, followlinks=False):
        rel = os.path.relpath(folder, bundle)
        rel_parts = () if rel == "." else tuple(rel.split(os.sep))
        for name in sorted(dirs + names):
            path = os.path.join(folder, name)
            parts = rel_parts + (name,)
            if _never_copied(parts):
                if name in dirs:
                    dirs.remove(name)
                continue
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([real_root, target]) != real_root:
                    raise RunnerExit(EXIT_BAD_FILE, "%s: symlink to %s, outside the bundle; not run"
                                     % ("/".join(parts), target))
                if not os.path.isfile(target):
                    raise RunnerExit(EXIT_BAD_FILE, "%s: symlink to a folder, a missing file or a special file; "
                                                    "not run" % "/".join(parts))
            if name in dirs:
                continue
            if not os.path.isfile(path):
                raise RunnerExit(EXIT_BAD_FILE, "%s: not a regular file; not run" % "/".join(parts))
            found["/".join(parts)] = path
    return found


def verify_bundle(bundle, manifest):
    """Every file of the bundle against the manifest's ``files``, before any of it is loaded or run: each listed
    name a plain path inside the bundle whose sha256 matches, and every file present listed. Exit 3 naming the
    file. (The host checked the same before the copy; this catches a copy changed on the way or on the device.)"""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise RunnerExit(EXIT_BAD_FILE, "%s lists no 'files' (the sha256 of every bundle file), so nothing of the "
                                        "bundle can be verified; not run (rebuild it with edgeopt package)" % MANIFEST)
    if len(files) > MAX_FILES:
        raise RunnerExit(EXIT_BAD_FILE, "%s: 'files' lists %d files, more than %d" % (MANIFEST, len(files), MAX_FILES))
    for name, digest in files.items():
        problem = listed_name_problem(name)
        if problem:
            raise RunnerExit(EXIT_BAD_FILE, "%s: files entry %r %s; not run" % (MANIFEST, name, problem))
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise RunnerExit(EXIT_BAD_FILE, "%s: files[%r] must be 64 lowercase hex digits" % (MANIFEST, name))
    present = bundle_files(bundle)
    unlisted = sorted(set(present) - set(files))
    if unlisted:
        raise RunnerExit(EXIT_BAD_FILE, "%s: not listed in the manifest's files, so it was not verified; not run%s"
                         % (unlisted[0], "" if len(unlisted) == 1 else " (%d more unlisted: %s)"
                            % (len(unlisted) - 1, ", ".join(unlisted[1:6]))))
    for name in sorted(files):
        if name not in present:
            raise RunnerExit(EXIT_BAD_FILE, "%s: listed in the manifest but missing; not run" % name)
        _, mismatch = verify_file(bundle, name, files[name])
        if mismatch:
            raise RunnerExit(EXIT_BAD_FILE, "%s: %s; not run" % (name, mismatch))


def load_source_module(name, path):
    """Import a verified ``.py`` file of the bundle from its source (never from a byte code cache)."""
    with open(path, "rb") as f:
        source = f.read()
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# ------------------------------------------------------------------------------------------ execution targets


def execution_targets(manifest, runtime, backend):
    """Where the bundle's profile runs ``runtime`` (``profile.execution``, e.g. ["tensorrt", "cuda"]), or None for
    the CPU (also for bundles written before targets existed). A target the backend has no support for is exit 4."""
    execution = (manifest.get("profile") or {}).get("execution")
    targets = execution.get(runtime) if isinstance(execution, dict) else None
    if targets is None or targets == ["cpu"]:
        return None
    if not isinstance(targets, list) or not targets or not all(
            isinstance(t, str) and _RUNTIME_NAME.match(t) for t in targets):
        raise RunnerExit(EXIT_BAD_FILE, "manifest profile.execution.%s must be a list of target names, got %r"
                         % (runtime, targets))
    can = tuple(getattr(backend, "targets", ("cpu",)))
    unknown = [t for t in targets if t not in can]
    if unknown:
        raise RunnerExit(EXIT_UNSUPPORTED, "runner/%s/backend.py cannot execute on %s (it runs on: %s)"
                         % (runtime, ", ".join(unknown), ", ".join(can)))
    return targets


def load_options(targets):
    """Keyword arguments of ``backend.load``/``load_lm``: none for the CPU, so backends without targets still load."""
    return {"targets": targets} if targets else {}


def record_execution(result, model):
    """``execution``: where the backend says the model ran (providers, node and time share per provider). Its
    ``invalid_reason`` (a GPU run that fell back to the CPU) makes the result invalid in ``validity``."""
    report = getattr(model, "execution_report", None)
    if callable(report):
        result["execution"] = report()


# ------------------------------------------------------------------------------------------ backend


def load_backend(runtime):
    """Import ``runner/<runtime>/backend.py`` by path and the runtime itself; missing ones are exit 4."""
    if not _RUNTIME_NAME.match(runtime or ""):
        raise RunnerExit(EXIT_BAD_FILE, "manifest names an invalid runtime %r" % runtime)
    path = os.path.join(RUNNER_DIR, runtime, "backend.py")
    if not os.path.isfile(path):
        raise RunnerExit(EXIT_UNSUPPORTED, "this bundle has no runner for %s (no %s)" % (runtime, path))
    pip_name = PIP_PACKAGES.get(runtime, runtime)
    try:
        module = load_source_module("edgeopt_backend_" + runtime, path)
        pip_name = getattr(module, "pip_package", pip_name)
        version = str(module.version())  # imports the runtime itself
    except ImportError as e:
        raise RunnerExit(EXIT_UNSUPPORTED, "%s is not installed on this device (%s); install it with: "
                                           "python3 -m pip install %s" % (runtime, e, pip_name)) from None
    return module, version


def output_order(model, manifest_names):
    """Indices into ``model.run``'s list for the manifest's outputs: by name when the runtime names them."""
    names = list(getattr(model, "output_names", None) or [])
    if all(n in names for n in manifest_names):
        return [names.index(n) for n in manifest_names]
    return list(range(len(manifest_names)))  # runtimes without names (executorch) keep export order


# --------------------------------------------------------------------------------------- samples


def load_inputs_npz(bundle):
    """(path, every array of ``inputs.npz``); unreadable or malformed is exit 3. Never unpickles."""
    path = os.path.join(bundle, "inputs.npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            return path, {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise RunnerExit(EXIT_BAD_FILE, "cannot read %s: %s" % (path, e)) from None


def read_samples(bundle, art, trimmed=False):
    """Inputs ``[K, ...]`` per manifest input, plus reference and (where present) expected outputs.

    ``trimmed``: the host outputs at the samples' real lengths (``trimmed.*``), where the bundle has them.

    A missing key, a shape that contradicts the manifest or too few samples is exit 3: a broken bundle,
    not something the runtime should be blamed for.
    """
    path, arrays = load_inputs_npz(bundle)
    inputs = {}
    for spec in art["inputs"]:
        key = "input." + spec["name"]
        inputs[spec["name"]] = _cast(path, key, _samples(arrays, path, key, 1), spec.get("dtype"))
        _check_shape(path, key, inputs[spec["name"]].shape[1:], spec.get("shape"))
    k = min(a.shape[0] for a in inputs.values())
    references, expected = {}, {}
    for spec in art["outputs"]:
        references[spec["name"]] = _samples(arrays, path, "reference." + spec["name"], k)[:k]
        # A bundle with several artifacts keeps each one's host outputs as expected.<file>.<output>.
        keys = ("expected.%s.%s" % (art["file"], spec["name"]), "expected." + spec["name"])
        if trimmed:
            keys = tuple("trimmed" + key[len("expected"):] for key in keys) + keys
        for key in keys:
            if key in arrays:
                expected[spec["name"]] = _samples(arrays, path, key, k)[:k]
                break
    return inputs, references, expected, k


def _samples(arrays, path, key, at_least):
    if key not in arrays:
        raise RunnerExit(EXIT_BAD_FILE, "%s has no %r (it has: %s)" % (path, key, ", ".join(sorted(arrays))))
    value = arrays[key]
    if value.ndim < 1 or value.shape[0] < at_least:
        raise RunnerExit(EXIT_BAD_FILE, "%s: %r must hold at least %d sample(s) along its first axis, shape %s"
                         % (path, key, at_least, value.shape))
    return value


def _cast(path, key, value, dtype):
    try:
        return value.astype(dtype, copy=False) if dtype else value
    except TypeError as e:
        raise RunnerExit(EXIT_BAD_FILE, "%s: %r cannot be cast to %s: %s" % (path, key, dtype, e)) from None


def _check_shape(path, key, shape, manifest_shape):
    if not isinstance(manifest_shape, list):
        return
    # Dynamic dimensions are written as names, null or -1 in the manifest; only fixed ones are compared.
    fixed = [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in manifest_shape]
    if len(fixed) != len(shape) or any(f is not None and f != s for f, s in zip(fixed, shape)):
        raise RunnerExit(EXIT_BAD_FILE, "%s: %r samples have shape %s, the manifest says %s"
                         % (path, key, list(shape), manifest_shape))


def sample_feeds(inputs, index):
    """The feeds dict of sample ``index`` (batch dim kept: sample arrays are ``[K, *input_shape]``)."""
    return {name: np.ascontiguousarray(value[index]) for name, value in inputs.items()}


# ------------------------------------------------------------------------------------------ lengths


def artifact_lengths(art):
    """The artifact's ``lengths`` entry when its sequence length varies (dynamic or buckets), else None."""
    lengths = art.get("lengths")
    if not isinstance(lengths, dict) or lengths.get("mode") == "static":
        return None
    where = "manifest artifact %s: lengths" % art["file"]
    mode, top = lengths.get("mode"), lengths.get("max")
    if mode not in ("dynamic", "buckets") or not isinstance(top, int) or top < 1:
        raise RunnerExit(EXIT_BAD_FILE, "%s needs mode dynamic|buckets|static and an integer max, got %r"
                         % (where, {k: lengths.get(k) for k in ("mode", "max")}))
    if mode == "buckets":
        buckets = lengths.get("buckets")
        if not isinstance(buckets, list) or not buckets or sorted(buckets) != buckets or buckets[-1] != top:
            raise RunnerExit(EXIT_BAD_FILE, "%s.buckets must be increasing lengths ending at max %d, got %r"
                             % (where, top, buckets))
    if not isinstance(lengths.get("inputs"), list) or lengths.get("mask") not in lengths["inputs"]:
        raise RunnerExit(EXIT_BAD_FILE, "%s needs 'inputs' (the tensors with a sequence axis) including 'mask'" % where)
    return lengths


def fit_length(lengths, n):
    """The length to run ``n`` real tokens at: ``n`` (dynamic, at least ``min``) or the smallest bucket holding it."""
    if n > lengths["max"]:
        raise RunnerExit(EXIT_USAGE, "%d tokens exceed the artifact's maximum length %d; truncate the input to %d "
                                     "tokens (or package with a larger shapes.seq_len)" % (n, lengths["max"],
                                                                                          lengths["max"]))
    if lengths["mode"] == "dynamic":
        return max(n, int(lengths.get("min", 1)))
    return min(b for b in lengths["buckets"] if b >= n)


def real_length(feeds, lengths):
    """Tokens up to the last position the attention mask keeps (over the batch); at least 1."""
    mask = np.asarray(feeds[lengths["mask"]])
    kept = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=0))[0]
    return int(kept[-1]) + 1 if kept.size else 1


def feeds_at(feeds, lengths, n):
    """``feeds`` cut or zero-padded (attention mask 0: padding) along the sequence axis to ``n`` tokens."""
    axis, out = int(lengths.get("axis", 1)), {}
    for name, value in feeds.items():
        if name in lengths["inputs"]:
            have = value.shape[axis]
            if have >= n:
                value = np.take(value, np.arange(n), axis=axis)
            else:
                pad = [(0, 0)] * value.ndim
                pad[axis] = (0, n - have)
                value = np.pad(value, pad)
        out[name] = np.ascontiguousarray(value)
    return out


def crop(value, lengths, name, n):
    """An output (or its reference) with a sequence axis cut to the first ``n`` positions."""
    value = np.asarray(value)
    if name not in lengths.get("outputs", ()):
        return value
    return np.take(value, np.arange(n), axis=int(lengths.get("axis", 1)))


def timing_feeds(args, lengths, inputs, k):
    """(feeds per timed run, in turn; the real lengths; the lengths run at), per ``--seq-len`` or the samples."""
    if lengths is None:
        if args.seq_len is not None:
            raise RunnerExit(EXIT_USAGE, "--seq-len: this artifact has static shapes (every input padded to its "
                                         "fixed length); drop the flag")
        return [sample_feeds(inputs, 0)], None, None
    if args.seq_len is not None:
        feeds = sample_feeds(inputs, 0)
        run_len = fit_length(lengths, args.seq_len)
        return [feeds_at(feeds_at(feeds, lengths, args.seq_len), lengths, run_len)], [args.seq_len], [run_len]
    out, real, run = [], [], []
    for i in range(k):
        feeds = sample_feeds(inputs, i)
        n = real_length(feeds, lengths)
        real.append(n)
        run.append(fit_length(lengths, n))
        out.append(feeds_at(feeds, lengths, run[-1]))
    return out, real, run


# ------------------------------------------------------------------------------------------ timing


def timed_block(run, warmup, runs, min_seconds, max_seconds, max_runs):
    """Warm up, then time ``run()`` until ``runs`` and ``min_seconds`` are both reached or a cap hits.

    Returns the per-run latencies in milliseconds (an ``array('d')``, compact for very fast models).
    """
    for _ in range(warmup):
        run()
    times = array("d")
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        times.append((t1 - t0) * 1000.0)
        elapsed = t1 - start
        if len(times) >= runs and elapsed >= min_seconds:
            break
        if elapsed >= max_seconds or len(times) >= max_runs:
            break
    return times


def latency_stats(times_ms):
    """mean, std, min, p50, p90, p99, max in milliseconds (linear-interpolated percentiles)."""
    a = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    values = {"mean": a.mean(), "std": a.std(), "min": a.min(), "p50": p50, "p90": p90, "p99": p99, "max": a.max()}
    return {k: round(float(v), 4) for k, v in values.items()}


# ------------------------------------------------------------------------------------------ validity


def stability_reason(p90s_ms, max_spread):
    """Why a run is unstable (the repeats' p90 spread, relative to the lowest, exceeds ``max_spread``) or None."""
    if len(p90s_ms) < 2:
        return None
    low, high = min(p90s_ms), max(p90s_ms)
    spread = (high - low) / low if low > 0 else (0.0 if high == 0 else float("inf"))
    if spread > max_spread:
        return "unstable: p90 across repeats spread %.0f%% > %.0f%%" % (spread * 100, max_spread * 100)
    return None


def thermal_reason(before_c, after_c, max_rise_c):
    """Why the run is invalid because the device heated up by more than ``max_rise_c``, or None."""
    if before_c is None or after_c is None or after_c - before_c <= max_rise_c:
        return None
    return "thermal: temperature rose %.1f C (%.1f -> %.1f) > %.1f C" % (after_c - before_c, before_c, after_c,
                                                                          max_rise_c)


def frequency_reason(before_mhz, after_mhz, max_drop):
    """Why the run is invalid because the mean CPU frequency fell by more than ``max_drop``, or None."""
    if not before_mhz or after_mhz is None:
        return None
    drop = (before_mhz - after_mhz) / before_mhz
    if drop <= max_drop:
        return None
    return "throttled: CPU frequency fell %.0f%% (%.0f -> %.0f MHz) > %.0f%%" % (drop * 100, before_mhz, after_mhz,
                                                                                  max_drop * 100)


def nonfinite_reason(outputs_by_name):
    """Which outputs hold NaN or Inf (``outputs_by_name``: name -> list of arrays), or None."""
    bad = []
    for name, arrays in outputs_by_name.items():
        count = sum(int(np.size(a) - np.count_nonzero(np.isfinite(a))) for a in arrays)
        if count:
            bad.append("%s has %d NaN/Inf values" % (name, count))
    return ("non-finite outputs: " + ", ".join(bad)) if bad else None


# ------------------------------------------------------------------------------------------ parity


def cosine(a, b):
    """Cosine similarity of two arrays, flattened, in float64; two zero vectors count as identical."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return max(-1.0, min(1.0, float(np.dot(a, b)) / (na * nb)))


def max_abs_err(a, b):
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(diff.max()) if diff.size else 0.0


def parity(outputs_by_name, references, expected):
    """Per sample and output: cosine and max abs error against the fp32 reference, max abs error vs the host.

    Arrays are compared flattened, so a runtime that drops or adds a size-1 dimension still compares.
    """
    cosines, errors, host_errors = [], [], []
    for name, arrays in outputs_by_name.items():
        for i, out in enumerate(arrays):
            ref = references[name][i]
            if ref.size != np.size(out):
                raise RunnerExit(EXIT_BAD_FILE, "output %r has %d values but inputs.npz's reference has %d"
                                 % (name, np.size(out), ref.size))
            cosines.append(cosine(out, ref))
            errors.append(max_abs_err(np.ravel(out), ref.ravel()))
            if name in expected and expected[name][i].size == np.size(out):
                host_errors.append(max_abs_err(np.ravel(out), expected[name][i].ravel()))
    return {
        "reference": "fp32",
        "max_abs_err": max(errors),
        "min_cosine": min(cosines),
        "mean_cosine": sum(cosines) / len(cosines),
        "host_max_abs_err": max(host_errors) if host_errors else None,
        "samples": len(next(iter(outputs_by_name.values()))),
    }


# ------------------------------------------------------------------------------------------ device


def _read_text(path):
    try:
        with open(path, "r") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def device_info():
    """machine, cpu, cores, ram_mb, os, python; fields a device does not expose are null."""
    cpu = None
    for line in (_read_text("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
            cpu = value.strip()
            if key.strip() == "model name":
                break
    ram_mb = None
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read_text("/proc/meminfo") or "", re.M)
    if match:
        ram_mb = int(match.group(1)) // 1024
    return {"machine": platform.machine()[:64] or "unknown", "cpu": (cpu or platform.processor() or None),
            "cores": os.cpu_count(), "ram_mb": ram_mb, "os": platform.platform()[:256],
            "python": platform.python_version()}


def read_temperature_c():
    """Hottest thermal zone in degrees C, or None where none is readable."""
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            value = float((_read_text(path) or "").strip())
        except ValueError:
            continue
        value = value / 1000.0 if abs(value) > 1000 else value  # most kernels report millidegrees
        if -40.0 < value < 150.0:  # zones that are not sensors report 0 or garbage
            temps.append(value)
    return round(max(temps), 1) if temps else None


def read_frequency_mhz(cores):
    """Mean current frequency of ``cores`` (all CPUs if None) in MHz, or None where not exposed."""
    freqs = []
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"):
        cpu_id = int(re.search(r"cpu(\d+)/cpufreq", path).group(1))
        if cores is not None and cpu_id not in cores:
            continue
        try:
            freqs.append(float((_read_text(path) or "").strip()) / 1000.0)  # kHz
        except ValueError:
            continue
    return round(sum(freqs) / len(freqs), 1) if freqs else None


def peak_rss_mb():
    """Peak resident memory of this process in MiB, or None where neither source exists (Windows).

    Linux and Android: VmHWM from /proc/self/status. getrusage's ru_maxrss is only the fallback there,
    because exec keeps the launching process's high-water mark in it (a runner started from a large
    process would report that process's memory).
    """
    match = re.search(r"^VmHWM:\s+(\d+)\s*kB", _read_text("/proc/self/status") or "", re.M)
    if match:
        return round(int(match.group(1)) / 1024.0, 2)
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_mb = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # macOS reports bytes, Linux KiB
    return round(peak / per_mb, 2)


def set_affinity(cores):
    """Pin this process to ``cores``; exit 2 where the OS cannot or the ids do not exist."""
    if cores is None:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise RunnerExit(EXIT_USAGE, "--cores needs Linux or Android (os.sched_setaffinity); drop the flag here")
    try:
        os.sched_setaffinity(0, cores)
    except OSError as e:
        raise RunnerExit(EXIT_USAGE, "cannot pin to cores %s: %s" % (cores, e)) from None


def profile_compute(manifest):
    """The bundle profile's ``compute`` mapping ({} when the manifest has none)."""
    profile = manifest.get("profile")
    compute = profile.get("compute") if isinstance(profile, dict) else None
    return compute if isinstance(compute, dict) else {}


def profile_threads(manifest):
    """The profile's ``compute.threads`` when it is a positive integer, else None."""
    wanted = profile_compute(manifest).get("threads")
    return wanted if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0 else None


def core_max_freqs(cpus):
    """{cpu id: cpuinfo_max_freq in kHz} for the ``cpus`` whose cpufreq tells it (Linux, Android)."""
    out = {}
    for cpu in cpus:
        text = _read_text("/sys/devices/system/cpu/cpu%d/cpufreq/cpuinfo_max_freq" % cpu)
        if text and text.strip().isdigit():
            out[cpu] = int(text.strip())
    return out


def pick_affinity(manifest, args):
    """``config.affinity`` of the result, and the cores to pin to (None: no pinning).

    ``--cores`` wins; else the profile's ``compute.affinity``: ``fastest`` pins to the ``threads`` cores with the
    highest maximum frequency (ties: the lower ids), when the cores this process may use differ in it; with one
    core type (or no cpufreq to read) pinning gains nothing and the scheduler keeps its freedom."""
    if args.cores is not None:
        return {"mode": "cores", "cores": list(args.cores), "reason": "--cores"}, list(args.cores)
    if profile_compute(manifest).get("affinity", "none") != "fastest":
        return {"mode": "none", "cores": None, "reason": "profile compute.affinity: none"}, None
    if not hasattr(os, "sched_getaffinity"):
        return {"mode": "none", "cores": None, "reason": "no sched_getaffinity on this OS"}, None
    cpus = sorted(os.sched_getaffinity(0))
    freqs = core_max_freqs(cpus)
    if len(freqs) != len(cpus) or len(set(freqs.values())) < 2:
        why = "every usable core has the same maximum frequency" if len(freqs) == len(cpus) else \
            "cpufreq gives no maximum frequency for every core"
        return {"mode": "none", "cores": None, "reason": "profile asks for fastest, but " + why}, None
    wanted = args.threads or profile_threads(manifest) or len(cpus)
    chosen = sorted(sorted(cpus, key=lambda c: (-freqs[c], c))[:wanted])
    return {"mode": "fastest", "cores": chosen, "reason": "profile compute.affinity: fastest (max kHz %s)"
            % ",".join(str(freqs[c]) for c in chosen)}, chosen


def pick_spinning(manifest, args, backend, runtime):
    """The ``spinning`` load option: ``--spin``, else the profile's ``compute.spinning`` where the backend has the
    switch; None leaves the runtime's default."""
    if args.spin is not None:
        if not getattr(backend, "supports_spinning", False):
            raise RunnerExit(EXIT_USAGE, "--spin: runner/%s/backend.py has no spinning setting; drop the flag"
                             % runtime)
        return args.spin == "on"
    wanted = profile_compute(manifest).get("spinning")
    if isinstance(wanted, bool) and getattr(backend, "supports_spinning", False):
        return wanted
    return None


def default_threads(manifest, cores):
    """The profile's ``compute.threads``, capped to the CPUs this process may use (all of them without one)."""
    if cores:
        available = len(cores)
    elif hasattr(os, "sched_getaffinity"):
        available = len(os.sched_getaffinity(0))
    else:
        available = os.cpu_count() or 1
    wanted = profile_threads(manifest)
    return min(wanted, available) if wanted else available


# ------------------------------------------------------------------------------------------ result


def base_result(args, runtime, threads, art_file, sha, verified):
    """The result fields known before anything is measured; measurements stay null until filled."""
    return {
        "schema_version": SCHEMA_VERSION,
        "runtime": {"name": runtime, "version": None},
        "device": device_info(),
        "config": {"threads": threads, "warmup": args.warmup, "runs": args.runs, "min_seconds": args.min_seconds,
                   "max_seconds": args.max_seconds, "repeats": args.repeats, "cooldown_s": args.cooldown_s,
                   "cores": args.cores, "max_spread": args.max_spread, "max_temp_rise_c": args.max_temp_rise_c,
                   "max_freq_drop": args.max_freq_drop},
        "artifact": {"file": art_file, "sha256": sha, "verified": verified},
        "load_ms": None, "first_inference_ms": None, "latency_ms": None, "repeats_p90_ms": [], "timed_runs": 0,
        "peak_rss_mb": None, "thermal_c": {"before": None, "after": None},
        "cpu_freq_mhz": {"before": None, "after": None},
        "valid": False, "invalid_reason": None, "parity": None,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def measure(args, result, model, feeds_list):
    """Fill load-independent timings: first inference, the timed repeats and the thermal/frequency readings.

    Timed runs take ``feeds_list`` in turn (one entry: always the same input)."""
    feeds = feeds_list[0]
    turn = [0]

    def run_next():
        model.run(feeds_list[turn[0] % len(feeds_list)])
        turn[0] += 1

    t0 = time.perf_counter()
    model.run(feeds)
    result["first_inference_ms"] = round((time.perf_counter() - t0) * 1000.0, 4)
    result["thermal_c"]["before"] = read_temperature_c()
    result["cpu_freq_mhz"]["before"] = read_frequency_mhz(args.cores)
    all_times, p90s = array("d"), []
    for i in range(args.repeats):
        if i:
            time.sleep(args.cooldown_s)
        times = timed_block(run_next, args.warmup, args.runs, args.min_seconds,
                            args.max_seconds, args.max_runs)
        p90s.append(round(float(np.percentile(np.asarray(times), 90)), 4))
        all_times.extend(times)
    # Read right after the last timed run, before the parity runs let the device cool.
    result["thermal_c"]["after"] = read_temperature_c()
    result["cpu_freq_mhz"]["after"] = read_frequency_mhz(args.cores)
    result["latency_ms"] = latency_stats(all_times)
    result["repeats_p90_ms"] = p90s
    result["timed_runs"] = len(all_times)


def check_parity(result, model, inputs, references, expected, k, output_names, order, lengths=None):
    """Run every sample, fill ``parity``; returns the non-finite reason (parity stays null then) or None.

    With ``lengths`` each sample runs as an app sends it (trimmed to its real length, then at that length or the
    smallest bucket) and is compared on its real positions."""
    outputs = {name: [] for name in output_names}
    refs, host = {name: [] for name in output_names}, {name: [] for name in expected}
    for i in range(k):
        feeds = sample_feeds(inputs, i)
        n = real_length(feeds, lengths) if lengths else None
        produced = model.run(feeds_at(feeds, lengths, fit_length(lengths, n)) if lengths else feeds)
        for name, index in zip(output_names, order):
            if lengths is None:
                outputs[name].append(np.asarray(produced[index]))
                refs[name].append(references[name][i])
                if name in expected:
                    host[name].append(expected[name][i])
                continue
            outputs[name].append(crop(produced[index], lengths, name, n))
            refs[name].append(crop(references[name][i], lengths, name, n))
            if name in expected:
                host[name].append(crop(expected[name][i], lengths, name, n))
    reason = nonfinite_reason(outputs)
    if reason is None:
        result["parity"] = parity(outputs, refs, host)
    return reason


def validity(result, args, nonfinite):
    """Set ``valid`` and ``invalid_reason`` from every check that applies (reasons joined with '; ')."""
    reasons = [nonfinite,
               stability_reason(result["repeats_p90_ms"], args.max_spread),
               thermal_reason(result["thermal_c"]["before"], result["thermal_c"]["after"], args.max_temp_rise_c),
               frequency_reason(result["cpu_freq_mhz"]["before"], result["cpu_freq_mhz"]["after"],
                                args.max_freq_drop),
               (result.get("execution") or {}).get("invalid_reason")]  # a GPU run that fell back to the CPU
    reasons = [r for r in reasons if r]
    result["valid"] = not reasons
    result["invalid_reason"] = "; ".join(reasons) if reasons else None


def verified_result(args, bundle, manifest, art, runtime, threads):
    """Check the artifact (and ``inputs.npz`` when the manifest lists it) before the runtime sees anything.

    Returns the result skeleton; an artifact sha256 mismatch is exit 3 carrying that skeleton with
    ``verified: false``, so the device still reports what it found.
    """
    sha, mismatch = verify_file(bundle, art["file"], art["sha256"])
    result = base_result(args, runtime, threads, art["file"], sha, mismatch is None)
    if mismatch:
        result["invalid_reason"] = mismatch
        raise RunnerExit(EXIT_BAD_FILE, "%s: %s; not loaded" % (art["file"], mismatch), result)
    verify_bundle(bundle, manifest)
    return result


def run_benchmark(args):
    """Everything after flag parsing; returns the result dict or raises RunnerExit."""
    if np is None:
        raise RunnerExit(EXIT_UNSUPPORTED, "numpy is not installed on this device; install it with: "
                                           "python3 -m pip install numpy")
    bundle = os.path.abspath(args.bundle)
    manifest = load_manifest(bundle)
    art = pick_artifact(manifest, args.artifact, args.runtime)
    runtime = artifact_runtime(art)
    affinity, cores = pick_affinity(manifest, args)
    set_affinity(cores)
    threads = args.threads or default_threads(manifest, cores)
    result = verified_result(args, bundle, manifest, art, runtime, threads)
    result["config"]["cores"] = cores
    result["config"]["affinity"] = affinity
    check_tokenizer(result, bundle, manifest)
    if isinstance(art.get("lm"), dict):
        return run_lm_benchmark(args, bundle, manifest, art, runtime, threads, result)
    lengths = artifact_lengths(art)
    inputs, references, expected, k = read_samples(bundle, art, trimmed=lengths is not None)
    feeds_list, real_lengths, run_lengths = timing_feeds(args, lengths, inputs, k)
    if lengths is not None:
        result["lengths"] = {"mode": lengths["mode"], "max": lengths["max"], "seq_len": args.seq_len,
                             "real": real_lengths, "run": run_lengths}
    backend, version = load_backend(runtime)
    result["runtime"]["version"] = version[:64]
    targets = execution_targets(manifest, runtime, backend)
    log("%s %s, %s, %d threads, %d samples%s" % (runtime, version, art["file"], threads, k,
                                                ", on " + ", ".join(targets) if targets else ""))
    artifact_path = os.path.join(bundle, art["file"])
    options = load_options(targets)
    spinning = pick_spinning(manifest, args, backend, runtime)
    if spinning is not None:
        options["spinning"] = spinning
    probe_options = dict(options)
    if "profile" in _parameters(backend.load):  # the probe's run proves nothing about providers: no profile file
        probe_options["profile"] = False
    probe_in_child(art["file"], runtime,
                   lambda: backend.load(artifact_path, threads, **probe_options).run(feeds_list[0]))
    t0 = time.perf_counter()
    model = _call_runtime("load", art["file"], runtime, lambda: backend.load(artifact_path, threads, **options))
    result["load_ms"] = round((time.perf_counter() - t0) * 1000.0, 4)
    output_names = [spec["name"] for spec in art["outputs"]]
    order = output_order(model, output_names)
    _call_runtime("run", art["file"], runtime, lambda: measure(args, result, model, feeds_list))
    nonfinite = _call_runtime("run", art["file"], runtime, lambda: check_parity(
        result, model, inputs, references, expected, k, output_names, order, lengths))
    result["peak_rss_mb"] = peak_rss_mb()
    record_execution(result, model)
    record_runner(result, model)
    validity(result, args, nonfinite)
    return result


def record_runner(result, model):
    """``config.threads``: the threads the runtime reports it runs on (where it tells); ``extra.runner``: which
    runner of the runtime ran (executorch: ``light``, the wheel's C++ runtime without torch, or ``pybindings``)."""
    used = getattr(model, "threads", None)
    if isinstance(used, int) and not isinstance(used, bool) and used > 0:
        result["config"]["threads"] = used
    spinning = getattr(model, "spinning", None)
    if isinstance(spinning, bool):
        result.setdefault("extra", {})["spinning"] = spinning
    runner = getattr(model, "runner", None)
    if isinstance(runner, str):
        result.setdefault("extra", {})["runner"] = runner[:32]


# ------------------------------------------------------------------------------------------ decoder LMs


def read_lm_samples(bundle, art, first):
    """Held-out prompts and windows with the fp32 model's greedy tokens and NLL, and this artifact's on the host."""
    path, arrays = load_inputs_npz(bundle)
    out = {key: _samples(arrays, path, key, 1) for key in ("lm.prompts", "lm.windows", "reference.nll",
                                                          "reference.tokens")}
    for name in ("nll", "tokens"):  # this artifact's own host outputs, when the bundle kept them
        for key in ("expected.%s.%s" % (art["file"], name), "expected." + name if first else None):
            if key and key in arrays:
                out["expected." + name] = arrays[key]
                break
    for key in ("lm.prompts", "lm.windows", "reference.tokens"):
        if out[key].ndim != 2 or out[key].dtype.kind not in "iu":
            raise RunnerExit(EXIT_BAD_FILE, "%s: %r must be integer token ids [K, n], got %s %s"
                             % (path, key, out[key].dtype, list(out[key].shape)))
    return out


def _lm_lengths(art):
    lm = art["lm"]
    try:
        prompt_len, context_len = int(lm["prompt_len"]), int(lm["context_len"])
    except (KeyError, TypeError, ValueError):
        raise RunnerExit(EXIT_BAD_FILE, "manifest artifact %s: lm needs integer prompt_len and context_len"
                         % art["file"]) from None
    if not 1 <= prompt_len < context_len:
        raise RunnerExit(EXIT_BAD_FILE, "manifest artifact %s: lm.prompt_len %d must be >= 1 and < context_len %d"
                         % (art["file"], prompt_len, context_len))
    return prompt_len, context_len


def measure_lm(args, result, session, prompt, new_tokens):
    """Timed generations: each is a prefill of ``prompt`` then ``new_tokens - 1`` decode steps.

    ``latency_ms`` and ``repeats_p90_ms`` are per decode step; ``generation`` holds time to first token,
    prefill and decode tokens/s. Each repeat runs whole generations until ``--min-seconds`` (at least one,
    capped by ``--max-seconds``) after one untimed warm-up generation when ``--warmup`` > 0.
    """
    lmeval = _lmeval()
    timer = {}
    lmeval.greedy(session, prompt, new_tokens, timer)  # the first generation, cold
    result["first_inference_ms"] = round(timer["prefill_s"] * 1000.0, 4)
    if args.warmup:
        lmeval.greedy(session, prompt, new_tokens)
    result["thermal_c"]["before"] = read_temperature_c()
    result["cpu_freq_mhz"]["before"] = read_frequency_mhz(args.cores)
    decode_ms, prefill_s, p90s, generations = array("d"), [], [], 0
    for i in range(args.repeats):
        if i:
            time.sleep(args.cooldown_s)
        block, start = [], time.perf_counter()
        while True:
            timer = {}
            lmeval.greedy(session, prompt, new_tokens, timer)
            generations += 1
            prefill_s.append(timer["prefill_s"])
            block.extend(t * 1000.0 for t in timer["decode_s"])
            elapsed = time.perf_counter() - start
            if elapsed >= args.min_seconds or elapsed >= args.max_seconds:
                break
        if block:
            p90s.append(round(float(np.percentile(np.asarray(block), 90)), 4))
        decode_ms.extend(block)
    result["thermal_c"]["after"] = read_temperature_c()
    result["cpu_freq_mhz"]["after"] = read_frequency_mhz(args.cores)
    result["latency_ms"] = latency_stats(decode_ms) if len(decode_ms) else None
    result["repeats_p90_ms"] = p90s
    result["timed_runs"] = len(decode_ms)
    ttft = float(np.median(np.asarray(prefill_s)))
    mean_decode_s = float(np.mean(np.asarray(decode_ms))) / 1000.0 if len(decode_ms) else None
    result["generation"] = {
        "prompt_tokens": int(len(prompt)), "new_tokens": int(new_tokens), "generations": generations,
        "ttft_ms": round(ttft * 1000.0, 4),
        "prefill_tokens_per_s": round(len(prompt) / ttft, 3) if ttft > 0 else None,
        "decode_tokens_per_s": round(1.0 / mean_decode_s, 3) if mean_decode_s else None,
    }


def check_lm_quality(result, session, samples, prompt_len):
    """Greedy tokens on every held-out prompt against the fp32 model's (and the host's), and perplexity on the
    held-out windows against the fp32 model's; returns the non-finite reason or None."""
    lmeval = _lmeval()
    n = samples["reference.tokens"].shape[1]
    agree_ref, agree_host, prefix = [], [], []
    for i, prompt in enumerate(samples["lm.prompts"]):
        tokens = lmeval.greedy(session, prompt, n)
        a, p = lmeval.token_agreement(tokens, samples["reference.tokens"][i % len(samples["reference.tokens"])])
        agree_ref.append(a)
        prefix.append(p)
        if "expected.tokens" in samples and i < len(samples["expected.tokens"]):
            agree_host.append(lmeval.token_agreement(tokens, samples["expected.tokens"][i])[0])
    nll = []
    for window in samples["lm.windows"]:
        logits = lmeval.teacher_forced_logits(session, window, split=min(prompt_len, len(window) - 1))
        if not np.isfinite(logits).all():
            return "non-finite outputs: logits hold NaN or Inf"
        nll.append(lmeval.mean_nll(logits, window))
    ref_nll = samples["reference.nll"][:len(nll)].astype(np.float64)
    ppl, ref_ppl = math.exp(float(np.mean(nll))), math.exp(float(np.mean(ref_nll)))
    host = samples.get("expected.nll")
    result["lm_quality"] = {
        "reference": "fp32", "prompts": len(agree_ref), "windows": len(nll),
        "greedy_agreement": round(float(np.mean(agree_ref)), 6),
        "greedy_prefix_mean": round(float(np.mean(prefix)), 3),
        "host_greedy_agreement": round(float(np.mean(agree_host)), 6) if agree_host else None,
        "perplexity": round(ppl, 6), "reference_perplexity": round(ref_ppl, 6),
        "perplexity_ratio": round(ppl / ref_ppl, 6),
        "host_nll_max_abs_diff": (round(float(np.max(np.abs(np.asarray(nll) - host[:len(nll)]))), 8)
                                  if host is not None and len(host) >= len(nll) else None),
    }
    return None


def _sibling(name):
    """``<name>.py`` beside this file (verified with the bundle), compiled from its source; imported once."""
    if name not in sys.modules:
        # generate.py imports this runner as ``runner``: let it find this very module, not a second copy.
        if sys.modules.get(__name__) is not None:
            sys.modules.setdefault("runner", sys.modules[__name__])
        load_source_module(name, os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py"))
    return sys.modules[name]


def _lmeval():
    """``lmeval.py`` beside this file: greedy decoding, token agreement, perplexity."""
    return _sibling("lmeval")


def _generate():
    """``generate.py`` beside this file: the bundle's text -> tokens loop and its golden-ids check."""
    return _sibling("generate")


def check_tokenizer(result, bundle, manifest):
    """``result["tokenizer"]``: the bundle's golden texts tokenized with its ``tokenizer/tokenizer.json`` against the
    stored ids (``generate.check_golden``), when the bundle has ``tokenizer/golden.json``. A mismatch, or a check
    that could not run, is logged; it does not make the timing invalid."""
    check = _generate().check_golden(bundle, manifest)
    if check is None:
        return
    result["tokenizer"] = check
    line = _generate().describe_check(check)
    log(line if check["ok"] and check["files_verified"] is not False else "warning: " + line)


def run_lm_benchmark(args, bundle, manifest, art, runtime, threads, result):
    """The generation benchmark of a decoder-LM artifact (``lm`` in its manifest entry)."""
    prompt_len, context_len = _lm_lengths(art)
    samples = read_lm_samples(bundle, art, art["file"] == manifest["artifacts"][0]["file"])
    backend, version = load_backend(runtime)
    result["runtime"]["version"] = version[:64]
    if not hasattr(backend, "load_lm"):
        raise RunnerExit(EXIT_UNSUPPORTED, "runner/%s/backend.py has no load_lm: this runner cannot run decoder LMs"
                         % runtime)
    new_tokens = max(1, min(args.new_tokens, context_len - prompt_len + 1))
    prompt = samples["lm.prompts"][0][:prompt_len]
    log("%s %s, %s (decoder LM), %d threads, prompt %d tokens, %d new tokens per generation"
        % (runtime, version, art["file"], threads, len(prompt), new_tokens))
    t0 = time.perf_counter()
    artifact_path = os.path.join(bundle, art["file"])
    targets = execution_targets(manifest, runtime, backend)
    session = _call_runtime("load", art["file"], runtime,
                            lambda: backend.load_lm(artifact_path, threads, art["lm"], **load_options(targets)))
    result["load_ms"] = round((time.perf_counter() - t0) * 1000.0, 4)
    _call_runtime("run", art["file"], runtime, lambda: measure_lm(args, result, session, prompt, new_tokens))
    nonfinite = _call_runtime("run", art["file"], runtime,
                              lambda: check_lm_quality(result, session, samples, prompt_len))
    result["peak_rss_mb"] = peak_rss_mb()
    record_execution(result, session)
    record_runner(result, session)
    validity(result, args, nonfinite)
    return result


def _parameters(function):
    """The parameter names of ``function`` (none where Python cannot tell, e.g. a builtin)."""
    import inspect

    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def probe_in_child(file_name, runtime, run_once):
    """Run ``run_once`` (load the artifact, run it once) in a forked child first; a native crash of the runtime
    there (a signal: SIGSEGV, SIGABRT, ...) is exit 4 naming it, not the death of this runner.

    A Python-level failure in the child is left to the real load and run that follow (they report it with its
    message). Skipped where the OS has no fork and with ``EDGEOPT_RUNNER_PROBE=0``."""
    import signal

    if not hasattr(os, "fork") or os.environ.get("EDGEOPT_RUNNER_PROBE", "1") == "0":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 0
        try:
            run_once()
        except BaseException:  # noqa: BLE001 - reported by the parent's own run
            code = 1
        finally:
            os._exit(code)
    try:
        status = os.waitpid(pid, 0)[1]  # EINTR is retried by Python itself (PEP 475)
    except KeyboardInterrupt:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "signal %d" % number
        hint = (" (SIGKILL: out of memory? see dmesg)" if number == getattr(signal, "SIGKILL", None) else
                ": the artifact is corrupt or this %s build cannot run it; re-package it with edgeopt package "
                "--force, and check it runs on the host with edgeopt bench --device local" % runtime)
        raise RunnerExit(EXIT_UNSUPPORTED, "%s crashed with %s loading and running %s once in a child process%s"
                         % (runtime, name, file_name, hint))


def _call_runtime(verb, file_name, runtime, call):
    """Run a runtime call; its failure on a verified artifact means this runtime cannot run it (exit 4)."""
    try:
        return call()
    except RunnerExit:
        raise
    except Exception as e:  # the runtime's own exception types differ per runtime and version
        message = " ".join(str(e).split())[:500]
        raise RunnerExit(EXIT_UNSUPPORTED, "%s could not %s %s: %s: %s" % (runtime, verb, file_name,
                                                                          type(e).__name__, message)) from None


@contextmanager
def stdout_to_stderr():
    """Send anything printed to stdout meanwhile (also by native runtime code) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit(result, out_path):
    """Print the result as one JSON line on stdout, and write it to ``out_path`` if given.

    Returns False when ``out_path`` could not be written (the result is on stdout regardless).
    """
    text = json.dumps(result, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if not out_path:
        return True
    try:
        with open(out_path, "w") as f:
            f.write(text + "\n")
    except OSError as e:
        log("error: cannot write --out %s: %s" % (out_path, e))
        return False
    return True


def main(argv=None):
    """Entry point; returns the process exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    code, result = EXIT_OK, None
    try:
        with stdout_to_stderr():
            result = run_benchmark(args)
    except RunnerExit as e:
        log("error: " + str(e))
        code, result = e.code, e.result
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    if result is not None:
        if not emit(result, args.out) and code == EXIT_OK:
            code = EXIT_USAGE
        if code == EXIT_OK and not result["valid"]:
            log("measured, but not valid: " + result["invalid_reason"])
    return code


if __name__ == "__main__":
    sys.exit(main())
