"""The anchor for the decoder-LM benchmark: a Hugging Face Llama exported through ExecuTorch's own LLM path.

    python benchmarks/et_anchor.py --model HF_DIR [--out DIR] [--threads 2] [--rounds 3]

ExecuTorch documents one route for Llama on XNNPACK: its own transformer (``examples/models/llama``,
``llama_transformer`` with a KV cache in mutable buffers and the ``llama::custom_sdpa`` / ``llama::update_cache``
ops) loaded from a Meta-format checkpoint + ``params.json``, then ``export_llama`` (the library behind
``python -m executorch.extension.llm.export.export_llm``) with ``model.use_kv_cache``,
``model.use_sdpa_with_kv_cache``, ``quantization.qmode=8da4w`` and ``backend.xnnpack``. This module converts an HF
``LlamaForCausalLM`` folder to that checkpoint (key renaming plus the inverse of the q/k rotary permutation that
HF's conversion script applies; tied embeddings are copied to ``output.weight``), runs ``export_llama`` with an
``LlmConfig`` built in Python, and serves the .pte through the LM session contract of
``runtimes/common/README.md`` ("Decoder LMs") so the benchmark times and scores it exactly like edgeopt's artifacts.

By default the program returns only the last position's logits (``debug.generate_full_logits=False``, the
setting ExecuTorch's runner is built for): ``prefill`` then returns ``[1, vocab]`` and ``AnchorSession.full_logits``
is False; score such a program with :func:`score_logits`, which feeds the tokens one decode step at a time.
``export_anchor(..., full_logits=True)`` exports the variant whose ``prefill`` returns ``[n, vocab]``.

The ``__main__`` exports fp32 and 8da4w, checks the fp32 anchor against transformers (max abs logit error and
16 greedy tokens) and prints size, prefill tokens/s (prompt 64) and decode tokens/s (64 tokens), the median of
interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1024 * 1024

#: quant name -> (qmode for export_llama, group size). "8da4w": int4 weights in groups of 32 with int8 dynamic
#: activations; "8da8w": int8 per-channel weights with int8 dynamic activations.
QUANTS: dict[str, tuple[str | None, int | None]] = {
    "fp32": (None, None),
    "8da4w": ("8da4w", 32),
    "8da8w": ("8da8w", 0),
}

# HF LlamaForCausalLM key -> Meta key ({} is the layer index); the inverse of ExecuTorch's _FROM_META tables.
_HF_TO_META = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
}


def _unpermute(w, n_heads: int):
    """Undo HF's rotary permutation of a q/k projection (rotate-half layout -> Meta's interleaved pairs).

    HF's ``convert_llama_weights_to_hf.permute`` maps Meta rows to
    ``w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2)``; this is its inverse.
    """
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta(hf_dir: Path) -> tuple[dict, dict]:
    """(Meta-format state dict, ``params.json`` dict) for the HF ``LlamaForCausalLM`` saved in ``hf_dir``."""
    from edgeopt.errors import InputFileError, UnsupportedError

    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise InputFileError(f"{hf_dir}: no config.json (save the model with save_pretrained)")
    cfg = json.loads(config_path.read_text())
    if cfg.get("model_type") != "llama":
        raise UnsupportedError(f"{config_path}: model_type {cfg.get('model_type')!r}; the anchor takes 'llama' only")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise UnsupportedError(f"{config_path}: {key}=true; ExecuTorch's Llama has no biases (use a bias-free model)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"{config_path}: hidden_act {cfg['hidden_act']!r}; the anchor supports 'silu'")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UnsupportedError(f"{config_path}: rope_type {rope_type!r}; the anchor supports 'default' and 'llama3'")
    rope_theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))

    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    params = {
        "dim": cfg["hidden_size"],
        "n_layers": cfg["num_hidden_layers"],
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "head_dim": head_dim,
        "hidden_dim": cfg["intermediate_size"],
        "vocab_size": cfg["vocab_size"],
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        "rope_theta": float(rope_theta),
    }
    if rope_type == "llama3":
        params["use_scaled_rope"] = True
        params["rope_scale_factor"] = int(rope["factor"])
        params["high_freq_factor"] = int(rope.get("high_freq_factor", 4))

    state = _load_safetensors(hf_dir)
    meta: dict = {}
    for key, value in state.items():
        parts = key.split(".")
        layer = None
        pattern = key
        if len(parts) > 3 and parts[1] == "layers":
            layer = parts[2]
            pattern = ".".join(parts[:2] + ["{}"] + parts[3:])
        if pattern not in _HF_TO_META:
            if key.endswith("rotary_emb.inv_freq"):
                continue
            raise UnsupportedError(f"{hf_dir}: weight {key!r} has no place in ExecuTorch's Llama")
        new_key = _HF_TO_META[pattern].format(layer) if layer is not None else _HF_TO_META[pattern]
        if pattern.endswith("q_proj.weight"):
            value = _unpermute(value, n_heads)
        elif pattern.endswith("k_proj.weight"):
            value = _unpermute(value, n_kv)
        meta[new_key] = value.float().contiguous()
    if "output.weight" not in meta:  # tied embeddings: HF stores lm_head only once, as embed_tokens
        meta["output.weight"] = meta["tok_embeddings.weight"].clone()
    return meta, params


def _load_safetensors(hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    from edgeopt.errors import InputFileError

    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(hf_dir / shard)))
        return state
    single = hf_dir / "model.safetensors"
    if not single.is_file():
        raise InputFileError(f"{hf_dir}: no model.safetensors (save the model with save_pretrained)")
    return load_file(str(single))


def export_anchor(
    hf_dir: Path,
    out_dir: Path,
    *,
    quant: str,
    max_seq_len: int,
    max_context_len: int,
    full_logits: bool = False,
    embedding_quantize: str | None = None,
) -> Path:
    """Export the HF Llama in ``hf_dir`` through ExecuTorch's ``export_llama``; returns the written .pte.

    ``quant`` is a key of ``QUANTS``. The program has the KV cache (mutable buffers) and ExecuTorch's custom SDPA,
    is lowered to XNNPACK (with extended ops), and accepts 1..``max_seq_len - 1`` tokens per call (dynamic shape);
    ``max_context_len`` is the cache length. ``full_logits`` exports logits for every position (else the last
    one only). ``embedding_quantize`` is export_llama's ``"<bits>,<group>"`` (e.g. ``"4,32"``), off by default so
    the anchor quantizes the same layers as edgeopt's artifacts.
    """
    import torch

    from edgeopt.errors import ExportError, UsageError

    if quant not in QUANTS:
        raise UsageError(f"anchor quant {quant!r} is not one of {', '.join(QUANTS)}")
    if max_context_len < max_seq_len:
        raise UsageError(f"max_context_len {max_context_len} must be >= max_seq_len {max_seq_len}")
    from executorch.examples.models.llama.export_llama_lib import export_llama
    from executorch.extension.llm.export.config.llm_config import (
        DtypeOverride,
        LlmConfig,
        ModelType,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    state, params = hf_to_meta(Path(hf_dir))
    # Names matter: Llama2Model treats a checkpoint path containing "int8" or "8da4w" as pre-quantized.
    ckpt = out_dir / "anchor_meta_checkpoint.pth"
    params_path = out_dir / "anchor_params.json"
    torch.save(state, ckpt)
    params_path.write_text(json.dumps(params))
    hf_cfg = json.loads((Path(hf_dir) / "config.json").read_text())

    qmode, group_size = QUANTS[quant]
    cfg = LlmConfig()
    cfg.base.model_class = ModelType.llama3
    cfg.base.checkpoint = str(ckpt)
    cfg.base.params = str(params_path)
    eos = hf_cfg.get("eos_token_id")
    cfg.base.metadata = json.dumps(
        {"get_bos_id": hf_cfg.get("bos_token_id") or 0, "get_eos_ids": eos if isinstance(eos, list) else [eos or 0]}
    )
    cfg.model.dtype_override = DtypeOverride.fp32
    cfg.model.use_kv_cache = True
    cfg.model.use_sdpa_with_kv_cache = True
    cfg.model.enable_dynamic_shape = True
    cfg.export.max_seq_length = int(max_seq_len)
    cfg.export.max_context_length = int(max_context_len)
    cfg.export.output_dir = str(out_dir)
    name = f"et_anchor_{quant}{'_full' if full_logits else ''}{'_emb' if embedding_quantize else ''}.pte"
    cfg.export.output_name = str(out_dir / name)
    cfg.backend.xnnpack.enabled = True
    cfg.backend.xnnpack.extended_ops = True
    cfg.debug.generate_full_logits = bool(full_logits)
    # Set after construction: QuantizationConfig's validator lists int8/8da4w/8da4w-gptq/4w, while
    # source_transformation.quantize() also implements 8da8w.
    cfg.quantization.qmode = qmode
    cfg.quantization.group_size = group_size
    cfg.quantization.embedding_quantize = embedding_quantize
    try:
        written = Path(export_llama(cfg))
    except Exception as e:  # export_llama raises bare Exceptions from many layers
        raise ExportError(f"executorch export_llama ({quant}): {type(e).__name__}: {e}") from e
    if not written.is_file():  # save_pte_program logs write errors instead of raising
        raise ExportError(f"executorch export_llama ({quant}) reported {written} but did not write it")
    return written


class AnchorSession:
    """ExecuTorch's exported Llama as an LM session (``reset``, ``prefill``, ``decode``, ``position``).

    The method is ``forward(tokens int64 [1, T], input_pos int64 [1]) -> logits`` with 1 <= T < max_seq_len;
    the KV cache lives in the program. ``full_logits`` says whether ``prefill`` returns ``[n, vocab]`` (else
    ``[1, vocab]``, the last position only). Prompts longer than ``max_seq_len - 1`` are fed in chunks.
    """

    def __init__(self, program, threads: int):
        import torch

        self._torch = torch
        self._method = program.load_method("forward")
        meta = {}
        for name in ("get_max_seq_len", "get_max_context_len", "get_vocab_size", "get_n_layers"):
            meta[name] = int(program.load_method(name).execute([])[0])
        self.max_seq_len = meta["get_max_seq_len"]
        self.context_len = meta["get_max_context_len"]
        self.vocab_size = meta["get_vocab_size"]
        self.num_layers = meta["get_n_layers"]
        self.chunk = self.max_seq_len - 1
        self.threads = threads
        self.position = 0
        probe = self._run(np.array([0, 0], dtype=np.int64))
        self.full_logits = probe.shape[0] == 2
        self.reset()

    def reset(self) -> None:
        """Empty the cache: position 0 (stale cache rows lie past the position, so custom_sdpa masks them)."""
        self.position = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        torch = self._torch
        tokens = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64).reshape(1, -1))
        pos = torch.tensor([self.position], dtype=torch.int64)
        out = self._method.execute([tokens, pos])[0].numpy()
        self.position += int(ids.shape[0])
        return out.reshape(-1, out.shape[-1]).astype(np.float32, copy=False)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Logits for ``ids`` at ``position``: ``[n, vocab]`` if ``full_logits`` else ``[1, vocab]``."""
        from edgeopt.errors import UsageError

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or self.position + ids.size > self.context_len:
            raise UsageError(
                f"prefill of {ids.size} tokens at position {self.position}: needs 1..{self.context_len - self.position}"
            )
        outs = [self._run(ids[i : i + self.chunk]) for i in range(0, ids.size, self.chunk)]
        return np.concatenate(outs, axis=0) if self.full_logits else outs[-1]

    def decode(self, token: int) -> np.ndarray:
        """Float32 logits ``[vocab]`` for the position after ``token``; ``position += 1``."""
        from edgeopt.errors import UsageError

        if self.position >= self.context_len:
            raise UsageError(f"decode at position {self.position}: the KV cache holds {self.context_len} tokens")
        return self._run(np.array([int(token)], dtype=np.int64))[0]


def load_anchor(pte: Path, threads: int) -> AnchorSession:
    """An ``AnchorSession`` for ``pte`` with the XNNPACK threadpool sized to ``threads``."""
    # Imported for their side effects: llama::custom_sdpa / update_cache and quantized_decomposed::* kernels.
    import executorch.extension.llm.custom_ops.custom_ops
    import executorch.kernels.quantized  # noqa: F401 - quantized_decomposed::* (embedding quantization)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(int(threads))
    program = Runtime.get().load_program(str(pte))
    return AnchorSession(program, portable_lib._threadpool_get_thread_count())


def score_logits(session, ids: np.ndarray) -> np.ndarray:
    """Logits ``[n, vocab]`` for every position of ``ids`` from a fresh cache, for perplexity.

    A full-logits session prefills once; a last-logits one prefills the first token and decodes the rest.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    session.reset()
    if getattr(session, "full_logits", True):
        return session.prefill(ids)
    rows = [session.prefill(ids[:1])[-1]] + [session.decode(int(t)) for t in ids[1:]]
    return np.stack(rows)


def _check_parity(hf_dir: Path, session: AnchorSession, seqs: list[np.ndarray], greedy: int) -> dict:
    """Max abs logit error of ``session`` against transformers on ``seqs`` and agreement of ``greedy`` tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    max_err, max_ref = 0.0, 0.0
    with torch.no_grad():
        for ids in seqs:
            ref = model(torch.from_numpy(ids)[None]).logits[0].numpy()
            got = score_logits(session, ids)
            max_err = max(max_err, float(np.abs(ref - got).max()))
            max_ref = max(max_ref, float(np.abs(ref).max()))
        prompt = seqs[0][:8]
        ref_tokens = model.generate(
            torch.from_numpy(prompt)[None], max_new_tokens=greedy, do_sample=False, min_new_tokens=greedy
        )[0, prompt.size :].tolist()
    session.reset()
    logits = session.prefill(prompt)[-1]
    got_tokens = []
    for _ in range(greedy):
        got_tokens.append(int(np.argmax(logits)))
        logits = session.decode(got_tokens[-1])
    agree = sum(a == b for a, b in zip(ref_tokens, got_tokens))
    return {"max_abs_err": max_err, "max_abs_ref": max_ref, "greedy_agree": f"{agree}/{greedy}",
            "greedy_equal": ref_tokens == got_tokens}


def _time_once(session: AnchorSession, prompt: np.ndarray, decode_tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one prompt + greedy decode from a fresh cache."""
    session.reset()
    t0 = time.perf_counter()
    logits = session.prefill(prompt)[-1]
    t1 = time.perf_counter()
    token = int(np.argmax(logits))
    t2 = time.perf_counter()
    for _ in range(decode_tokens):
        token = int(np.argmax(session.decode(token)))
    t3 = time.perf_counter()
    return prompt.size / (t1 - t0), decode_tokens / (t3 - t2)


def main() -> None:
    """Export fp32 and 8da4w anchors, check fp32 parity, print size and tokens/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="HF LlamaForCausalLM folder (save_pretrained)")
    parser.add_argument("--out", type=Path, default=None, help="where the .pte files go (default: a temp dir)")
    parser.add_argument("--quants", default="fp32,8da4w", help=f"comma list of {', '.join(QUANTS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--reuse", action="store_true", help="reuse .pte files already in --out")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="et_anchor_"))
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    sessions, sizes = {}, {}
    for quant in quants:
        t0 = time.perf_counter()
        pte = out / f"et_anchor_{quant}.pte"
        if not (args.reuse and pte.is_file()):
            pte = export_anchor(args.model, out, quant=quant, max_seq_len=args.max_seq_len,
                                max_context_len=args.context)
        sizes[quant] = pte.stat().st_size / MB
        sessions[quant] = load_anchor(pte, args.threads)
        print(f"exported {quant}: {pte} ({sizes[quant]:.2f} MB, {time.perf_counter() - t0:.0f} s), "
              f"full_logits={sessions[quant].full_logits}", flush=True)

    seqs = [rng.integers(0, vocab, size=n, dtype=np.int64) for n in (8, 33, 100)]
    for quant in quants:
        print(f"parity {quant} vs transformers fp32:", _check_parity(args.model, sessions[quant], seqs, 16), flush=True)

    prompt = rng.integers(0, vocab, size=args.prompt, dtype=np.int64)
    runs: dict[str, list[tuple[float, float]]] = {q: [] for q in quants}
    for _ in range(args.rounds):
        for quant in quants:  # interleaved, so drift in machine load hits every variant alike
            runs[quant].append(_time_once(sessions[quant], prompt, args.decode))
    print(f"\n{'anchor':<8} {'size MB':>8} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for quant in quants:
        prefill = statistics.median(r[0] for r in runs[quant])
        decode = statistics.median(r[1] for r in runs[quant])
        print(f"{quant:<8} {sizes[quant]:>8.2f} {prefill:>14.1f} {decode:>13.1f}")


if __name__ == "__main__":
    main()
