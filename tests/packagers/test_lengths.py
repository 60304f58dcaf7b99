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
