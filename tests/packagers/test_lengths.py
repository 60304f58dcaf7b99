"""Input lengths as the app sends them (edgeopt/lengths.py): text encoders export a dynamic sequence axis.

Each artifact runs in its real runtime at several lengths against the eager model at that same length; the
device runner trims padding, runs at the real length, refuses a length over the maximum and picks the
smallest bucket; the manifest records how lengths work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeopt.errors import ExportError
from edgeopt.formats import Precision, Runtime
from edgeopt.lengths import LengthMode, Lengths, at_length, plan_lengths
from edgeopt.quantize import QuantScheme


def _load_runner():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "runtimes" / "common" / "runner.py"
    spec = importlib.util.spec_from_file_location("edgeopt_device_runner_lengths", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()

SEQ = 32
LENGTHS = (2, 7, 19, SEQ)
PACKAGERS = {Runtime.ONNXRUNTIME: "onnx", Runtime.EXECUTORCH: "executorch"}


def _eager(loaded, sample):
    import torch

    with torch.no_grad():
        return [t.numpy() for t in loaded.module(*(torch.from_numpy(x) for x in sample))]


@pytest.fixture(scope="module")
def fp32_artifacts(tiny_bert, tmp_path_factory):
    from edgeopt.packagers import get_packager

    out = {}
    for runtime in PACKAGERS:
        packager = get_packager(runtime)
        try:
            packager.check_available()
        except Exception as e:  # noqa: BLE001 - a missing optional converter is a skip naming it
            pytest.skip(str(e))
        art = packager.export(tiny_bert, QuantScheme(Precision.FP32), tmp_path_factory.mktemp(runtime.value),
                              shapes=(1, SEQ), calibration=[])
        out[runtime] = (packager, art)
    return out


@pytest.mark.parametrize("runtime", list(PACKAGERS), ids=list(PACKAGERS.values()))
def test_artifact_runs_at_every_length_like_eager(fp32_artifacts, tiny_bert, runtime):
    packager, art = fp32_artifacts[runtime]
    assert art.lengths.to_dict() == {"mode": "dynamic", "min": 2, "max": SEQ, "axis": 1,
                                     "inputs": list(tiny_bert.input_names), "outputs": ["last_hidden_state"],
                                     "mask": "attention_mask"}
    assert [s.shape for s in art.inputs] == [(1, -1)] * len(tiny_bert.input_names)
    example = tuple(t.numpy() for t in tiny_bert.example_inputs(1, SEQ))
    for n in LENGTHS:
        sample = at_length(example, tiny_bert.input_names, art.lengths, n)
        out, ref = packager.run(art, [sample])[0], _eager(tiny_bert, sample)
        assert out[1].shape == (1, n, 32)  # last_hidden_state at the length run
        assert max(float(np.abs(o - r).max()) for o, r in zip(out, ref)) < 1e-4, n  # measured ~2e-7


def test_trimmed_input_keeps_the_padded_sentence_embedding(fp32_artifacts, tiny_bert):
    """Masked mean pooling ignores padding: the real-length run gives the padded run's embedding."""
    packager, art = fp32_artifacts[Runtime.ONNXRUNTIME]
    sample = tuple(t.numpy() for t in tiny_bert.sample_inputs(1, seq_len=SEQ)[0])
    n = runner.real_length(dict(zip(tiny_bert.input_names, sample)), art.lengths.to_dict())
    assert n < SEQ
    padded, trimmed = packager.run(art, [sample, at_length(sample, tiny_bert.input_names, art.lengths, n)])
    assert float(np.abs(padded[0] - trimmed[0]).max()) < 1e-5
    assert float(np.abs(padded[1][:, :n] - trimmed[1]).max()) < 1e-4


def test_fit_picks_the_length_and_refuses_over_max():
    buckets = Lengths(LengthMode.BUCKETS, 128, 1, (16, 32, 64, 128), {b: f"seq_{b}" for b in (16, 32, 64, 128)})
    assert [buckets.fit(n) for n in (1, 16, 17, 64, 65, 128)] == [16, 16, 32, 64, 128, 128]
    dynamic = Lengths(LengthMode.DYNAMIC, 32, 2)
    assert [dynamic.fit(n) for n in (1, 2, 31, 32)] == [2, 2, 31, 32]
    with pytest.raises(ValueError, match="33 tokens exceed the artifact's maximum length 32; truncate"):
        dynamic.fit(33)
    assert Lengths.from_dict(buckets.to_dict()) == buckets


def test_runner_picks_the_smallest_bucket_and_refuses_over_max():
    lengths = {"mode": "buckets", "max": 128, "buckets": [16, 32, 64, 128], "inputs": ["input_ids", "attention_mask"],
               "mask": "attention_mask"}
    assert [runner.fit_length(lengths, n) for n in (3, 16, 17, 100)] == [16, 16, 32, 128]
    with pytest.raises(runner.RunnerExit, match="129 tokens exceed the artifact's maximum length 128") as e:
        runner.fit_length(lengths, 129)
    assert e.value.code == runner.EXIT_USAGE
    feeds = {"input_ids": np.arange(1, 8)[None], "attention_mask": np.array([[1, 1, 1, 1, 1, 0, 0]])}
    assert runner.real_length(feeds, lengths) == 5
    fitted = runner.feeds_at(feeds, lengths, 16)
    assert fitted["input_ids"].shape == (1, 16) and fitted["attention_mask"][0].tolist() == [1] * 5 + [0] * 11


def test_factory_models_keep_static_shapes(tiny_bert):
    from dataclasses import replace

    from edgeopt.models import Family

    other = replace(tiny_bert, family=Family.OTHER, config=None)
    assert plan_lengths(other, SEQ, LengthMode.DYNAMIC).mode is LengthMode.STATIC
    assert plan_lengths(tiny_bert, SEQ, LengthMode.BUCKETS).buckets == (16, SEQ)


def test_bundle_records_lengths_and_the_runner_runs_at_real_lengths(tiny_bert_dir, make_small_profile, tmp_path,
                                                                     capsys):
    from edgeopt.pipeline import package

    res = package(make_small_profile(), str(tiny_bert_dir), out=tmp_path, runtime=Runtime.ONNXRUNTIME,
                  precision=Precision.FP32)
    art = res.manifest["artifacts"][0]
    assert art["lengths"]["mode"] == "dynamic" and art["lengths"]["max"] == SEQ
    parity = art["details"]["lengths_parity"]
    assert parity["lengths"][0] == 2 and parity["lengths"][-1] == SEQ and parity["min_cosine"] > 0.99999
    assert "dynamic (2..32 tokens)" in (res.bundle_path / "README.md").read_text()
    base = ["--bundle", str(res.bundle_path), "--runs", "3", "--min-seconds", "0", "--repeats", "1", "--warmup", "0"]
    assert runner.main(base) == 0
    result = json.loads(capsys.readouterr().out)
    real = result["lengths"]["real"]
    assert result["lengths"]["run"] == real and len(real) == 8 and min(real) < SEQ
    assert result["parity"]["host_max_abs_err"] < 1e-5 and result["parity"]["min_cosine"] > 0.99999
    assert runner.main(base + ["--seq-len", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["lengths"]["run"] == [5]
    assert runner.main(base + ["--seq-len", str(SEQ + 1)]) == runner.EXIT_USAGE
    assert "33 tokens exceed the artifact's maximum length 32" in capsys.readouterr().err
    schema = json.loads((Path(runner.__file__).parent / "result_schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(result, schema)


# --- TFLite: one signature per length bucket ---------------------------------------------------


def _litert_backend():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "runtimes" / "litert" / "backend.py"
    spec = importlib.util.spec_from_file_location("edgeopt_litert_backend_lengths", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tflite_artifacts(tiny_bert, tmp_path_factory):
    """The tiny BERT as .tflite at seq_len 32 (buckets 16 and 32), fp32 and int8 (dynamic)."""
    from edgeopt.packagers import get_packager
    from edgeopt.quantize import default_scheme

    packager = get_packager(Runtime.LITERT)
    try:
        packager.check_available()
    except Exception as e:  # noqa: BLE001 - a missing optional converter is a skip naming it
        pytest.skip(str(e))
    work = tmp_path_factory.mktemp("tflite-lengths")
    fp32 = packager.export(tiny_bert, QuantScheme(Precision.FP32), work / "fp32", shapes=(1, SEQ), calibration=[])
    int8 = packager.export(tiny_bert, default_scheme(Precision.INT8), work / "int8", shapes=(1, SEQ), calibration=[])
    return packager, fp32, int8


def test_tflite_has_a_signature_per_bucket_and_runs_each_like_eager(tflite_artifacts, tiny_bert):
    from ai_edge_litert.interpreter import Interpreter

    packager, art, _ = tflite_artifacts
    assert art.lengths.to_dict() == {"mode": "buckets", "min": 1, "max": SEQ, "axis": 1,
                                     "inputs": list(tiny_bert.input_names), "outputs": ["last_hidden_state"],
                                     "mask": "attention_mask", "buckets": [16, SEQ],
                                     "signatures": {"16": "seq_16", "32": "seq_32"}}
    assert sorted(Interpreter(model_path=str(art.path)).get_signature_list()) == ["seq_16", "seq_32"]
    assert art.details["signatures"] == ["seq_16", "seq_32"]
    assert [s.shape for s in art.inputs] == [(1, SEQ)] * len(tiny_bert.input_names)  # the largest bucket's
    example = tuple(t.numpy() for t in tiny_bert.example_inputs(1, SEQ))
    for n in (*LENGTHS, 16, 17):  # 2, 7, 16 on seq_16; 17, 19, 32 on seq_32
        sample = at_length(example, tiny_bert.input_names, art.lengths, n)
        out, ref = packager.run(art, [sample])[0], _eager(tiny_bert, sample)
        assert out[1].shape == (1, n, 32)  # cut back from the bucket to the length run
        assert max(float(np.abs(o - r).max()) for o, r in zip(out, ref)) < 1e-5, n  # measured <= 7.2e-7


def test_litert_backend_and_runner_pick_the_smallest_bucket(tflite_artifacts, tiny_bert):
    _, art, _ = tflite_artifacts
    model = _litert_backend().load(str(art.path), 1)
    assert model.bucket_lengths == [16, SEQ]
    lengths = art.lengths.to_dict()
    sample = tuple(t.numpy() for t in tiny_bert.sample_inputs(1, seq_len=SEQ)[0])
    feeds = dict(zip(tiny_bert.input_names, sample))
    n = runner.real_length(feeds, lengths)
    for real, bucket in ((min(n, 16), 16), (17, SEQ)):
        run_at = runner.fit_length(lengths, real)
        assert run_at == bucket
        fitted = runner.feeds_at(runner.feeds_at(feeds, lengths, real), lengths, run_at)
        got = dict(zip(model.output_names, model.run(fitted)))
        assert got["last_hidden_state"].shape == (1, bucket, 32)  # that bucket's signature ran
        ref = _eager(tiny_bert, at_length(sample, tiny_bert.input_names, art.lengths, real))
        assert float(np.abs(got["last_hidden_state"][:, :real] - ref[1]).max()) < 1e-5  # measured ~7e-7
    short = runner.feeds_at(feeds, lengths, 5)  # unpadded feeds: the backend pads them to the 16 bucket itself
    assert model.run(short)[model.output_names.index("last_hidden_state")].shape == (1, 16, 32)
    with pytest.raises(ValueError, match="33 tokens exceed the largest bucket 32"):
        model.run(runner.feeds_at(feeds, lengths, SEQ + 1))


def test_tflite_int8_quantizes_and_gates_every_signature(tflite_artifacts, tiny_bert):
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    from edgeopt.packagers import tflite_weights

    _, art, int8 = tflite_artifacts
    weights = tflite_weights.match_weights(art.path, tiny_bert.module)
    by_graph = {g: sorted(w.module for w in weights.ops if w.subgraph == g) for g in (0, 1)}
    assert by_graph[0] == by_graph[1] and len(by_graph[0]) == 14  # 12 linears + word and token-type tables
    model = fbu.read_model(str(int8.path))
    assert len(model.subgraphs) == 2
    for g in (0, 1):  # every signature stores every weight int8
        ops = [w for w in weights.ops if w.subgraph == g]
        assert set(tflite_weights.stored_weight_types(int8.path, ops).values()) == {"INT8"}, g
    assert len(int8.coverage.quantized) == 14 and int8.coverage.unexpected() == {}
    assert int8.details["weights"] == {"INT8": 14}
    # The gate reads the second signature too: a weight float there only is refused.
    second = [w for w in weights.ops if w.subgraph == 1]
    with pytest.raises(ExportError, match="does not store weights as planned"):
        tflite_weights.weight_coverage(int8.scheme, weights, tflite_weights.stored_weight_types(art.path, second), {})
    # One copy of each weight, shared by both signatures.
    used = [{g.tensors[op.inputs[1]].buffer for op in g.operators
             if fbu.opcode_to_name(model, op.opcodeIndex) == "FULLY_CONNECTED"} for g in model.subgraphs]
    assert used[0] == used[1] and len(used[0]) == 12
    packager, example = tflite_artifacts[0], tuple(t.numpy() for t in tiny_bert.example_inputs(1, SEQ))
    for n in (7, 16, 19, SEQ):  # both signatures' int8 graphs against eager fp32 at that length
        sample = at_length(example, tiny_bert.input_names, art.lengths, n)
        out, ref = packager.run(int8, [sample])[0][1], _eager(tiny_bert, sample)[1]
        cos = float(np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref)))
        assert cos > 0.999, (n, cos)  # last_hidden_state


def test_tflite_bundle_records_buckets_and_checks_parity_at_each(tiny_bert_dir, make_small_profile, tmp_path, capsys):
    from edgeopt.pipeline import package

    res = package(make_small_profile(), str(tiny_bert_dir), out=tmp_path, runtime=Runtime.LITERT,
                  precision=Precision.FP32)
    art = res.manifest["artifacts"][0]
    assert art["lengths"]["mode"] == "buckets" and art["lengths"]["signatures"] == {"16": "seq_16", "32": "seq_32"}
    parity = art["details"]["lengths_parity"]
    assert {16, SEQ} <= set(parity["lengths"]) and parity["min_cosine"] > 0.99999
    readme = (res.bundle_path / "README.md").read_text()
    assert 'listOf(16 to "seq_16", 32 to "seq_32")' in readme and '[(16, "seq_16"), (32, "seq_32")]' in readme
    base = ["--bundle", str(res.bundle_path), "--runs", "3", "--min-seconds", "0", "--repeats", "1", "--warmup", "0"]
    assert runner.main(base) == 0
    result = json.loads(capsys.readouterr().out)
    real, run = result["lengths"]["real"], result["lengths"]["run"]
    assert run == [16 if n <= 16 else SEQ for n in real] and min(real) < SEQ
    assert result["parity"]["host_max_abs_err"] < 1e-5 and result["parity"]["min_cosine"] > 0.99999
