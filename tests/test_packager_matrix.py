"""Every model case × format × scheme, built by its packager and run in its real runtime.

Each cell is either built and proven (parity against the eager fp32 model, from one threshold table),
or refused with an UnsupportedError whose reason the packager declares in its Capabilities.notes.
Tiny random-init models carry the full matrix; MiniLM is covered by the format suites and benchmarks.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeopt.errors import MissingDependencyError, UnsupportedError
from edgeopt.formats import Precision, Runtime
from edgeopt.quantize import Activations, QuantScheme, default_scheme
from edgeopt.verify import compare

SCHEMES = {
    "fp32": QuantScheme(Precision.FP32),
    "fp16": QuantScheme(Precision.FP16),
    "int8-dynamic": default_scheme(Precision.INT8),
    "int8-static": replace(default_scheme(Precision.INT8), activations=Activations.STATIC),
    "int4": default_scheme(Precision.INT4),
}

# Minimum mean cosine of the artifact's primary output against the fp32 eager model on 8 held-out inputs.
# Set from measurement on these tiny random-init models (worst cell of every format, then rounded down
# with a margin); fp32 is an exact-conversion check, the rest bound quantization error.
MIN_COSINE = {
    "fp32": 0.99999,
    "fp16": 0.9995,
    "int8-dynamic": 0.995,
    "int8-static": 0.98,
    "int4": 0.95,
}
# Cells a packager refuses, with a fragment of the reason it must give. Any refusal not listed here
# fails the test, and so does a listed cell that builds (the table must follow the packagers).
EXPECTED_REFUSALS = {
    # ai-edge-quantizer 0.10 has no int4 per-group recipe for convolutions: int4 would leave them float.
    ("conv-net", Runtime.LITERT, "int4"): "CONV_2D",
    # onnxruntime's int4 is MatMulNBits, which has no Conv form.
    ("conv-net", Runtime.ONNXRUNTIME, "int4"): "no Conv form",
    # XNNPACK has no int4 convolution kernel.
    ("conv-net", Runtime.EXECUTORCH, "int4"): "no int4 convolution",
}
# fp32 artifacts must match eager to float rounding (relative to the output's scale).
FP32_MAX_REL_ERR = 1e-4

SEQ_LEN = 32


_CONV = textwrap.dedent("""
    import torch

    class SmallConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
            self.classifier = torch.nn.Linear(32, 10)

        def forward(self, image):
            return self.classifier(self.features(image).flatten(1))

    def make_model():
        torch.manual_seed(0)
        return SmallConvNet().eval(), (torch.randn(1, 3, 32, 32),)
""")


@pytest.fixture(scope="module")
def model_cases(tmp_path_factory, tiny_bert, tiny_llama_dir):
    from edgeopt.models import load_model

    root = tmp_path_factory.mktemp("matrix")
    conv = root / "convnet.py"
    conv.write_text(_CONV)
    return {
        "tiny-bert": tiny_bert,
        "tiny-llama": load_model(str(tiny_llama_dir)),
        "conv-net": load_model(f"{conv}:make_model"),
    }


def _packager(runtime: Runtime):
    from edgeopt.packagers import available_runtimes, get_packager

    if runtime not in available_runtimes():
        pytest.skip(f"no {runtime.value} packager in this tree")
    packager = get_packager(runtime)
    try:
        packager.check_available()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    return packager


@pytest.mark.parametrize("scheme_name", list(SCHEMES))
@pytest.mark.parametrize("runtime", list(Runtime), ids=lambda r: r.value)
@pytest.mark.parametrize("case", ["tiny-bert", "tiny-llama", "conv-net"])
def test_cell(model_cases, case, runtime, scheme_name, tmp_path):
    packager = _packager(runtime)
    loaded = model_cases[case]
    scheme = SCHEMES[scheme_name]
    calibration = loaded.sample_inputs(4, batch=1, seq_len=SEQ_LEN, split="calibration")
    samples = loaded.sample_inputs(8, batch=1, seq_len=SEQ_LEN, split="eval")
    expected_refusal = EXPECTED_REFUSALS.get((case, runtime, scheme_name))
    try:
        artifact = packager.export(loaded, scheme, tmp_path, shapes=(1, SEQ_LEN), calibration=calibration)
    except UnsupportedError as e:
        assert expected_refusal is not None, f"unexpected refusal: {e}"
        assert expected_refusal in str(e) and str(e).startswith(f"{runtime.format.value}:"), str(e)
        return
    assert expected_refusal is None, f"expected a refusal mentioning {expected_refusal!r}, but it built"
    with torch.no_grad():
        reference = [[t.numpy() for t in loaded.module(*s)] for s in samples]
    outputs = packager.run(artifact, [tuple(t.numpy() for t in s) for s in samples])
    fid = compare(reference, outputs, loaded.output_names, logits=loaded.output_names[0] == "logits")
    assert fid.finite
    assert fid.mean_cosine >= MIN_COSINE[scheme_name], f"{case} {runtime.value} {scheme_name}: {fid.summary()}"
    assert [tuple(o.shape) for o in outputs[0]] == [tuple(r.shape) for r in reference[0]]
    if scheme_name == "fp32":
        scale = max(float(np.abs(r).max()) for r in reference[0])
        assert fid.max_abs_err <= FP32_MAX_REL_ERR * max(scale, 1.0), fid.summary()
    if scheme.is_quantized:
        cov = artifact.coverage
        assert cov is not None and cov.quantized, "a quantized artifact must report what it quantized"
        assert not cov.unexpected(), cov.unexpected()
        assert artifact.path.stat().st_size > 0
