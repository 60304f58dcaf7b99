"""The architecture zoo: 20 architectures x 3 formats x fp32/int8, each cell verified in its runtime or refused
before any export work with the format, the feature and what to do. Never exit 1, never a converter traceback.

``benchmarks/zoo.py`` prints the same cells as a table. EXPECTED pins which cells are refusals and why, so a
regression in either direction (a verified cell breaking, a refusal becoming a build) fails here.
"""

from __future__ import annotations

import re

import pytest

import zoo_models

# (architecture, format, precision) -> a pattern the refusal must match; every other cell must verify.
REFUSED = {
    **{("gemma2", "onnx", p): r"onnx LM export: .* sliding_attention layers.*explicit-past graph"
       for p in zoo_models.PRECISIONS},
    **{("gemma2", "tflite", p): r"tflite lm: .*sliding-window attention.*--format pte or onnx"
       for p in zoo_models.PRECISIONS},
    ("deberta-v2", "pte", "int8"): r"executorch: deberta-v2 at int8 is not built: PT2E .*disentangled.*use --format "
                                   r"onnxruntime for int8, or --precision fp32 in executorch",
    ("deberta-v2", "tflite", "int8"): r"litert: deberta-v2 at int8 is not built: .*BATCH_MATMUL.*use --format "
                                      r"onnxruntime for int8",
    ("whisper", "pte", "int8"): r"executorch: whisper at int8 is not built: .*Conv1d stem.*use --format onnxruntime",
    ("whisper", "tflite", "int8"): r"litert: whisper at int8 is not built: .*Conv1d stem.*use --format onnxruntime",
}

CELLS = [(a, f, p) for a in zoo_models.CASES for f in zoo_models.FORMATS for p in zoo_models.PRECISIONS]


@pytest.fixture(scope="module")
def zoo_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {name: zoo_models.make(name, root / name) for name in zoo_models.CASES}


def test_the_zoo_covers_the_architectures_users_bring():
    assert len(zoo_models.CASES) == 20
    assert {"bert", "deberta-v2", "modernbert", "t5", "qwen3", "gemma2", "gpt_neox", "vit", "whisper"} <= set(zoo_models.CASES)


@pytest.mark.parametrize("arch,fmt,precision", CELLS, ids=[f"{a}-{f}-{p}" for a, f, p in CELLS])
def test_zoo_cell(zoo_dirs, tmp_path, arch, fmt, precision):
    import numpy as np

    cell = zoo_models.run_cell(zoo_dirs[arch], fmt, precision, tmp_path / "dist")
    assert cell["status"] != "error", cell.get("traceback") or cell["message"]
    refusal = REFUSED.get((arch, fmt, precision))
    if refusal:
        assert cell["status"] == "refused", cell
        assert cell["exit_code"] == 4 and cell["attempts"] == 0
        assert re.search(refusal, cell["message"], re.S), cell["message"]
        assert "Traceback" not in cell["message"]
        return
    assert cell["status"] == "verified", cell["message"]
    fid = cell["fidelity"]
    if zoo_models.CASES[arch].kind == "decoder":
        assert fid["perplexity_ratio"] <= 1.05 and fid["kl"] <= 0.05, fid
    else:
        assert fid["mean_cosine"] >= 0.99 and fid["finite"], fid
    expected_outputs = {"encoder": ["sentence_embedding", "last_hidden_state"], "decoder": None,
                        "vision": ["class_logits"], "speech": ["last_hidden_state"]}[zoo_models.CASES[arch].kind]
    if expected_outputs:
        assert cell["outputs"][:len(expected_outputs)] == expected_outputs
    # the bundle's host outputs are the artifact's own, stored for the device runner's parity check
    npz = np.load(f"{cell['bundle']}/inputs.npz")
    assert any(k.startswith("expected.") for k in npz.files)
