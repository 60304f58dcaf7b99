"""The architecture zoo: tiny random-initialised models built from transformers' own config classes.

Each entry saves a Hugging Face directory (config.json + model.safetensors) as a user would hand it to
edgeopt, with a fixed seed, at sizes that export in seconds. Used by ``tests/zoo/`` and ``benchmarks/zoo.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

H, L, HEADS, FFN, VOCAB, POS = 32, 2, 4, 64, 256, 128


@dataclass(frozen=True)
class ZooCase:
    name: str  # the transformers model_type family as users call it
    kind: str  # encoder | decoder | vision | speech
    build: Callable[[], object]  # returns the transformers model (random init, seeded by the caller)


def _enc(config_cls, model_cls, **kw):
    def build():
        import transformers

        config = getattr(transformers, config_cls)(**kw)
        return getattr(transformers, model_cls)(config)
    return build


_ENC = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FFN,
            max_position_embeddings=POS)
_DEC = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, num_key_value_heads=2,
            intermediate_size=FFN, max_position_embeddings=POS)

CASES: dict[str, ZooCase] = {c.name: c for c in (
    ZooCase("bert", "encoder", _enc("BertConfig", "BertModel", **_ENC)),
    ZooCase("distilbert", "encoder", _enc("DistilBertConfig", "DistilBertModel", vocab_size=VOCAB, dim=H, n_layers=L,
                                          n_heads=HEADS, hidden_dim=FFN, max_position_embeddings=POS)),
    ZooCase("roberta", "encoder", _enc("RobertaConfig", "RobertaModel", **{**_ENC, "max_position_embeddings": POS + 2})),
    ZooCase("xlm-roberta", "encoder", _enc("XLMRobertaConfig", "XLMRobertaModel",
                                           **{**_ENC, "max_position_embeddings": POS + 2})),
    ZooCase("electra", "encoder", _enc("ElectraConfig", "ElectraModel", embedding_size=16, **_ENC)),
    ZooCase("albert", "encoder", _enc("AlbertConfig", "AlbertModel", embedding_size=16, **_ENC)),
    ZooCase("mpnet", "encoder", _enc("MPNetConfig", "MPNetModel", **{**_ENC, "max_position_embeddings": POS + 2})),
    ZooCase("deberta-v2", "encoder", _enc("DebertaV2Config", "DebertaV2Model", relative_attention=True,
                                          position_buckets=32, pos_att_type=["p2c", "c2p"], **_ENC)),
    ZooCase("modernbert", "encoder", _enc("ModernBertConfig", "ModernBertModel", vocab_size=VOCAB, hidden_size=H,
                                          num_hidden_layers=3, num_attention_heads=HEADS, intermediate_size=FFN,
                                          max_position_embeddings=POS, global_attn_every_n_layers=3,
                                          local_attention=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                          cls_token_id=1, sep_token_id=2)),
    ZooCase("t5", "encoder", _enc("T5Config", "T5EncoderModel", vocab_size=VOCAB, d_model=H, d_kv=H // HEADS,
                                  d_ff=FFN, num_layers=L, num_heads=HEADS, relative_attention_num_buckets=8,
                                  feed_forward_proj="gated-gelu")),
    ZooCase("gpt2", "decoder", _enc("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=H, n_layer=L,
                                    n_head=HEADS, n_positions=POS)),
    ZooCase("llama", "decoder", _enc("LlamaConfig", "LlamaForCausalLM", **_DEC)),
    ZooCase("qwen2", "decoder", _enc("Qwen2Config", "Qwen2ForCausalLM", **_DEC)),
    ZooCase("qwen3", "decoder", _enc("Qwen3Config", "Qwen3ForCausalLM", head_dim=H // HEADS, **_DEC)),
    ZooCase("phi3", "decoder", _enc("Phi3Config", "Phi3ForCausalLM", pad_token_id=0, **_DEC)),
    ZooCase("gemma2", "decoder", _enc("Gemma2Config", "Gemma2ForCausalLM", head_dim=H // HEADS, sliding_window=64,
                                      **_DEC)),
    ZooCase("mistral", "decoder", _enc("MistralConfig", "MistralForCausalLM", sliding_window=None, **_DEC)),
    ZooCase("gpt_neox", "decoder", _enc("GPTNeoXConfig", "GPTNeoXForCausalLM", vocab_size=VOCAB, hidden_size=H,
                                        num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FFN,
                                        max_position_embeddings=POS, rotary_pct=0.5)),
    ZooCase("vit", "vision", _enc("ViTConfig", "ViTForImageClassification", hidden_size=H, num_hidden_layers=L,
                                  num_attention_heads=HEADS, intermediate_size=FFN, image_size=32, patch_size=8,
                                  num_labels=10)),
    ZooCase("whisper", "speech", _enc("WhisperConfig", "WhisperForConditionalGeneration", vocab_size=VOCAB, d_model=H,
                                      encoder_layers=L, decoder_layers=L, encoder_attention_heads=HEADS,
                                      decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
                                      num_mel_bins=16, max_source_positions=16, max_target_positions=32,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
)}


def make(name: str, path: Path, *, seed: int = 0) -> Path:
    """Save the zoo model ``name`` as a Hugging Face directory at ``path`` (config + safetensors)."""
    import torch

    torch.manual_seed(seed)
    model = CASES[name].build().eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


FORMATS = ("onnx", "pte", "tflite")
PRECISIONS = ("fp32", "int8")


def zoo_profile():
    """A desktop-class profile at short shapes (seq 16, a 48-token KV cache) with no latency target."""
    from edgeopt.profiles import Profile, load_profile

    base = load_profile("desktop-cpu").to_dict()
    base.update(name="zoo", shapes={"batch": 1, "seq_len": 16, "context_len": 48})
    base["limits"]["precisions"] = ["fp32", "fp16", "int8", "int4"]
    base["targets"] = {"latency_ms": None, "fidelity": {"min_cosine": 0.99, "max_perplexity_ratio": 1.05,
                                                          "max_kl": 0.05}}
    return Profile.from_dict(base, source="<zoo>")


def run_cell(model_dir: Path, fmt: str, precision: str, out: Path) -> dict:
    """Package ``model_dir`` in ``fmt`` at ``precision``: a verified bundle, a refusal, or a bug.

    Returns ``{"status": "verified"|"refused"|"failed"|"error", "exit_code", "message", "fidelity",
    "attempts", "seconds"}``; "refused" is exit 4 with nothing built, "failed" any other documented code,
    "error" an exception that is not an EdgeoptError (exit 1, a bug).
    """
    import time
    import traceback

    import edgeopt
    from edgeopt.errors import EdgeoptError

    start = time.perf_counter()
    cell = {"format": fmt, "precision": precision}
    try:
        result = edgeopt.package(profile=zoo_profile(), model=str(model_dir), out=out, fmt=fmt,
                                 precision=precision, force=True)
    except EdgeoptError as e:
        plan = getattr(e, "plan", None)
        attempts = sum(len(r.attempts) for r in plan.rows) if plan is not None else None
        status = "refused" if e.exit_code == 4 and not attempts else "failed"
        cell.update(status=status, exit_code=e.exit_code, message=str(e), attempts=attempts)
    except Exception as e:  # noqa: BLE001 - a bug: recorded, never raised out of the zoo
        cell.update(status="error", exit_code=1, message=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc(limit=8))
    else:
        art = result.manifest["artifacts"][0]
        cell.update(status="verified", exit_code=0, fidelity=art["fidelity"], bytes=art["bytes"],
                    outputs=[o["name"] for o in art["outputs"]], bundle=str(result.bundle_path))
    cell["seconds"] = round(time.perf_counter() - start, 1)
    return cell
