"""Decoder LMs end to end: the quality gate's arithmetic, package → bundle → device runner, and the gate itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeopt.data_runtimes.common import lmeval


class EagerSession:
    """The contract's session over the transformers model with its own dynamic cache: the arithmetic of
    lmeval is checked against one full forward, independently of any exporter."""

    def __init__(self, model):
        self.model = model
        self.reset()

    def reset(self):
        self.past, self.position = None, 0

    def _step(self, ids):
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.as_tensor(np.asarray(ids, dtype=np.int64))[None],
                             past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        self.position += len(ids)
        return out.logits[0].float().numpy()

    def prefill(self, ids):
        return self._step(ids)

    def decode(self, token):
        return self._step([token])[0]


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    from edgeopt.models import load_model

    return load_model(str(tiny_llama_dir))


def test_log_softmax_nll_and_kl_match_torch():
    import torch

    rng = np.random.default_rng(0)
    logits, other = rng.normal(size=(6, 11)) * 3, rng.normal(size=(6, 11)) * 3
    ids = rng.integers(0, 11, size=6)
    assert np.allclose(lmeval.log_softmax(logits), torch.log_softmax(torch.tensor(logits), -1).numpy(), atol=1e-12)
    nll = torch.nn.functional.cross_entropy(torch.tensor(logits[:-1]), torch.tensor(ids[1:])).item()
    assert lmeval.mean_nll(logits, ids) == pytest.approx(nll, rel=1e-12)
    kl = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(other), -1), torch.log_softmax(torch.tensor(logits), -1),
                                    log_target=True, reduction="batchmean").item()
    assert lmeval.mean_kl(logits, other) == pytest.approx(kl, rel=1e-10)
    assert lmeval.mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert lmeval.token_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == (0.75, 2)
    assert lmeval.token_agreement([5, 6], [5, 6]) == (1.0, 2)


def test_teacher_forced_logits_through_a_cache_equal_one_full_forward(tiny_lm):
    import torch

    model = tiny_lm.module.model
    ids = np.random.default_rng(3).integers(0, tiny_lm.config.vocab_size, size=20)
    with torch.no_grad():
        full = model(input_ids=torch.tensor(ids)[None]).logits[0].numpy()
    session = EagerSession(model)
    got = lmeval.teacher_forced_logits(session, ids, split=12)
    assert got.shape == full.shape and session.position == 20
    assert np.abs(got - full).max() < 1e-4
    tokens = lmeval.greedy(session, ids[:8], 6, timer=(timer := {}))
    assert len(tokens) == 6 and len(timer["decode_s"]) == 5 and session.position == 8 + 5


def test_quality_measure_of_the_eager_model_is_exact(tiny_lm):
    from edgeopt.lm import quality

    data = quality.prepare(tiny_lm, prompt_len=16, context_len=40, windows=3, decode_tokens=8, prompts=2, new_tokens=8)
    assert [len(w) for w in data.windows] == [24] * 3 and [len(p) for p in data.prompts] == [16, 16]
    fid, outs = quality.measure(EagerSession(tiny_lm.module.model), data)
    assert fid.perplexity_ratio == pytest.approx(1.0, abs=1e-5) and fid.kl < 1e-8
    assert fid.greedy_agreement == 1.0 and fid.greedy_prefix == 8.0 and fid.mean_cosine > 0.99999
    assert fid.perplexity == pytest.approx(math.exp(np.mean(data.reference_nll)), rel=1e-5)
    d = fid.to_dict()
    assert d["perplexity_ratio"] == pytest.approx(1.0, abs=1e-5) and len(outs.tokens) == 2
    from edgeopt.verify import Fidelity

    assert Fidelity.from_dict(d).kl == fid.kl


def test_gate_uses_perplexity_and_kl_not_cosine():
    from edgeopt.lm import quality
    from edgeopt.profiles import FidelityTargets
    from edgeopt.verify import Fidelity

    def fid(ppl, kl, cos=0.5):
        return Fidelity(cos, cos, 10.0, 1.0, 4, "fp32", 0.9, perplexity=ppl, reference_perplexity=10.0, kl=kl,
                        greedy_agreement=0.9, greedy_prefix=3.0)

    tol = FidelityTargets(min_cosine=0.99, max_perplexity_ratio=1.05, max_kl=0.05)
    assert quality.misses(fid(10.4, 0.01), tol) is None  # a low logits cosine alone does not fail an LM
    assert "perplexity x1.0600" in quality.misses(fid(10.6, 0.01), tol)
    assert "KL 0.0600 > max_kl 0.05" in quality.misses(fid(10.1, 0.06), tol)
    assert "logits mean cosine" in quality.misses(fid(10.1, 0.06), FidelityTargets(min_cosine=0.99))


def _lm_profile(runtime: str, **fidelity):
    from edgeopt.profiles import Profile, load_profile

    base = load_profile("desktop-cpu").to_dict()
    base["name"] = "test-lm"
    base["runtimes"] = [runtime]
    base["shapes"] = {"batch": 1, "seq_len": 16, "context_len": 48}
    base["targets"] = {"latency_ms": None, "fidelity": {"min_cosine": 0.99, "max_perplexity_ratio": 1.05,
                                                         "max_kl": 0.05, **fidelity}}
    return Profile.from_dict(base, source="<test>")


@pytest.mark.parametrize("runtime", ["onnxruntime", "litert", "executorch"])
def test_package_lm_bundle_then_the_runner_reports_tokens_per_s(runtime, tiny_llama_dir, tmp_path):
    """package → a KV-cache bundle gated on perplexity/KL → the device runner's generation benchmark."""
    from edgeopt import api

    result = api.package(str(tiny_llama_dir), profile=_lm_profile(runtime), out=tmp_path, precision="int8")
    m = result.manifest
    art, fid = m["artifacts"][0], m["fidelity"]
    assert art["runtime"] == runtime and art["precision"] == "int8"
    assert art["lm"]["context_len"] == 48 and art["lm"]["prompt_len"] == 16 and art["lm"]["kind"] == "causal_lm"
    assert fid["perplexity_ratio"] <= 1.05 and fid["kl"] <= 0.05 and 0 <= fid["greedy_agreement"] <= 1
    assert fid["reference_perplexity"] > 1 and fid["samples"] >= 4
    assert art["quantization"]["quantized_count"] > 0 and not any(
        not why.startswith("kept float") for why in art["quantization"]["kept_float"].values())
    chosen = next(r for r in m["plan"]["rows"] if r["status"] == "chosen")
    assert chosen["estimate"]["decode_ms"] > 0 and m["plan"]["context"]["family"] == "decoder"
    report = (result.bundle_path / "report.md").read_text()
    assert "perplexity" in report and "KL(fp32 || artifact)" in report
    with np.load(result.bundle_path / "inputs.npz") as z:
        assert z["lm.prompts"].shape[1] == 16 and z["reference.tokens"].shape == z["expected.tokens"].shape

    bench = api.bench(result.bundle_path, runs=1, min_seconds=0.2, warmup=1, repeats=2, cooldown_s=0.0, save=False)
    gen, quality = bench.raw["generation"], bench.raw["lm_quality"]
    assert gen["prompt_tokens"] == 16 and gen["new_tokens"] == 48 - 16 + 1 and gen["generations"] >= 2
    assert gen["decode_tokens_per_s"] > 0 and gen["prefill_tokens_per_s"] > 0 and gen["ttft_ms"] > 0
    assert bench.raw["timed_runs"] >= 2 * (gen["new_tokens"] - 1)
    # the runner on this host reruns the host's verification: same tokens, same perplexity
    assert quality["host_greedy_agreement"] == 1.0 and quality["host_nll_max_abs_diff"] < 1e-4
    assert quality["perplexity_ratio"] == pytest.approx(fid["perplexity_ratio"], rel=1e-3)
    assert bench.comparison["latency_ms"]["statistic"].startswith("time to first token")


def test_lm_gate_fails_int4_beyond_the_profile_kl_with_exit_5(tiny_llama_dir, tmp_path):
    from edgeopt import api
    from edgeopt.errors import FidelityError

    with pytest.raises(FidelityError) as e:
        api.package(str(tiny_llama_dir), profile=_lm_profile("onnxruntime", max_kl=1e-9), out=tmp_path,
                    precision="int4")
    assert e.value.exit_code == 5 and "KL" in str(e.value) and "max_kl 1e-09" in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_per_precision_thresholds_loosen_int4_only():
    from edgeopt.profiles import Profile, load_profile

    d = load_profile("arm-mobile").to_dict()
    d["targets"]["fidelity"]["by_precision"] = {"int4": {"max_perplexity_ratio": 1.1, "max_kl": 0.2}}
    fid = Profile.from_dict(d).targets.fidelity
    assert (fid.for_precision("int4").max_perplexity_ratio, fid.for_precision("int4").max_kl) == (1.1, 0.2)
    assert fid.for_precision("int8") is fid and fid.max_perplexity_ratio == 1.05
    assert "by_precision" not in load_profile("arm-mobile").to_dict()["targets"]["fidelity"]  # none set: none written


def test_lm_build_over_host_memory_is_refused_up_front_with_exit_6(tiny_llama_dir, tmp_path, monkeypatch):
    """A build whose estimated peak exceeds the host's available memory is refused before any export work:
    exit 6, the format, the estimate, what is available and what to do; no bundle."""
    from edgeopt import api
    from edgeopt.errors import ResourceError
    from edgeopt.packagers import lm

    def no_export(*a, **k):
        raise AssertionError("export_lm ran although the build was refused")

    monkeypatch.setattr(lm, "host_available_memory", lambda: 0)  # the only fake: the available-memory reading
    monkeypatch.setattr(lm, "export_lm", no_export)
    with pytest.raises(ResourceError) as e:
        api.package(str(tiny_llama_dir), profile=_lm_profile("onnxruntime"), out=tmp_path, precision="int8")
    msg = str(e.value)
    assert e.value.exit_code == 6
    assert "onnxruntime int8" in msg and "needs about" in msg and "GB of host memory at peak" in msg
    assert "available" in msg and "close other work" in msg and "GB of RAM" in msg and "--precision" in msg
    assert not any(tmp_path.iterdir())  # nothing written


def test_lm_build_memory_estimate_scales_with_the_model():
    from edgeopt.formats import Runtime
    from edgeopt.packagers import lm

    small, big = (lm.build_memory(Runtime.EXECUTORCH, "int8", n) for n in (10 ** 8, 10 ** 9))
    assert big > small > 10 ** 8 and big - small == pytest.approx(9e8 * lm.BUILD_MEMORY_FACTORS[
        (Runtime.EXECUTORCH, "int8")], rel=1e-6)
    assert lm.memory_shortfall(Runtime.EXECUTORCH, "int8", 10 ** 6) is None  # a tiny model fits this host
