"""Model families as data: what each transformers architecture is, what edgeopt packages of it, and which
export paths map it. The one place that knows model types; intake (``edgeopt.models``), the wrappers and the
packagers read it instead of special-casing names.

- ``ARCHS``: per ``config.model_type``, the modality (text, vision, speech) and what of it is packaged (the
  encoder of an encoder-decoder speech model), and whether litert-torch's generative (KV-cache) path maps
  its decoder.
- ``HEADS``: the task read from the class named in ``config.json`` ``architectures`` (``BertForMaskedLM`` →
  masked LM), and the outputs a bundle of that task has, named after what they are.

Stays import-light: no torch, no transformers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgeopt.errors import UnsupportedError
from edgeopt.formats import Precision, Runtime


class Modality(str, enum.Enum):
    TEXT = "text"
    VISION = "vision"
    SPEECH = "speech"


class Task(str, enum.Enum):
    """What the packaged network computes; decides the wrapper, the inputs and the output names."""

    EMBEDDING = "embedding"  # text encoder: pooled sentence embedding + per-token states
    SEQUENCE_CLASSIFICATION = "sequence_classification"
    TOKEN_CLASSIFICATION = "token_classification"
    MASKED_LM = "masked_lm"
    CAUSAL_LM = "causal_lm"
    IMAGE_CLASSIFICATION = "image_classification"
    IMAGE_EMBEDDING = "image_embedding"
    SPEECH_ENCODER = "speech_encoder"  # the encoder of a speech model: audio features -> hidden states


# Output names per task, in the order the wrapper returns them.
TASK_OUTPUTS: dict[Task, tuple[str, ...]] = {
    Task.EMBEDDING: ("sentence_embedding", "last_hidden_state"),
    Task.SEQUENCE_CLASSIFICATION: ("class_logits",),
    Task.TOKEN_CLASSIFICATION: ("token_class_logits",),
    Task.MASKED_LM: ("mlm_logits",),
    Task.CAUSAL_LM: ("logits",),
    Task.IMAGE_CLASSIFICATION: ("class_logits",),
    Task.IMAGE_EMBEDDING: ("image_embedding", "last_hidden_state"),
    Task.SPEECH_ENCODER: ("last_hidden_state",),
}
# Outputs with one row per input token (a sequence axis at dim 1): trimmed with the input's padding.
PER_TOKEN_OUTPUTS = frozenset({"last_hidden_state", "token_embeddings", "token_class_logits", "mlm_logits"})
# Outputs whose last axis is a class / vocabulary distribution: fidelity also reports top-1 agreement.
LOGIT_OUTPUTS = frozenset({"logits", "class_logits", "token_class_logits", "mlm_logits"})


@dataclass(frozen=True)
class Arch:
    """One transformers ``model_type``."""

    model_type: str
    modality: Modality = Modality.TEXT
    litert_lm: bool = False  # litert-torch's generative path builds its decoder with a KV cache (TFLite)
    encoder_only: bool = False  # an encoder-decoder model of which edgeopt packages the encoder
    note: str = ""  # what a user should know about how it is packaged
    # (runtime, precisions) a toolchain here cannot build for this architecture, and why: refused before any
    # export work (found by the zoo, tests/zoo/: each reason is the toolchain's failure, in words)
    refusals: tuple[tuple[Runtime, frozenset[Precision], str], ...] = ()


_QUANTIZED = frozenset({Precision.INT8, Precision.INT4})
ARCHS: dict[str, Arch] = {a.model_type: a for a in (
    # text encoders
    Arch("bert"), Arch("distilbert"), Arch("roberta"), Arch("xlm-roberta"), Arch("electra"), Arch("albert"),
    Arch("mpnet"), Arch("deberta"), Arch("deberta-v2", refusals=(
        (Runtime.EXECUTORCH, _QUANTIZED, "PT2E quantization cannot trace DeBERTa-v2's disentangled attention "
                                         "(torch.export: 'Unable to cast NotImplemented to Tensor' in the "
                                         "relative-position gather)"),
        (Runtime.LITERT, _QUANTIZED, "ai-edge-quantizer leaves the relative-position BATCH_MATMULs of DeBERTa-v2's "
                                     "disentangled attention float (constant operands it does not quantize)"),
    )), Arch("modernbert"), Arch("camembert"), Arch("xlm"),
    Arch("t5", note="the encoder stack (T5EncoderModel), as sentence-T5 and T5-based embedders use it"),
    Arch("mt5", note="the encoder stack (MT5EncoderModel)"),
    # decoders (litert_lm: mapped by litert-torch's generative export here and verified by the zoo)
    Arch("gpt2", litert_lm=True), Arch("llama", litert_lm=True), Arch("qwen2", litert_lm=True),
    Arch("qwen3", litert_lm=True), Arch("mistral", litert_lm=True), Arch("phi3", litert_lm=True),
    Arch("gemma2"), Arch("gpt_neox", litert_lm=True), Arch("smollm3"), Arch("gemma"), Arch("phi"),
    # vision and speech
    Arch("vit", Modality.VISION), Arch("deit", Modality.VISION), Arch("dinov2", Modality.VISION),
    Arch("whisper", Modality.SPEECH, encoder_only=True,
         note="the audio encoder only (log-mel input_features -> hidden states); the text decoder is not packaged",
         refusals=(
             (Runtime.EXECUTORCH, _QUANTIZED, "XNNPACK's dynamic int8 quantizer does not quantize the Conv1d stem "
                                              "of Whisper's encoder (conv1, conv2)"),
             (Runtime.LITERT, _QUANTIZED, "ai-edge-quantizer's dynamic recipe leaves the Conv1d stem of Whisper's "
                                          "encoder (CONV_2D) float"),
         )),
)}

# The class suffix in config.json "architectures" -> the task; first match wins.
HEADS: tuple[tuple[str, Task], ...] = (
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForMaskedLM", Task.MASKED_LM),
    ("ForCausalLM", Task.CAUSAL_LM),
    ("LMHeadModel", Task.CAUSAL_LM),
    ("ForImageClassification", Task.IMAGE_CLASSIFICATION),
)
_REFUSED_HEADS = ("ForQuestionAnswering", "ForMultipleChoice", "ForPreTraining", "ForNextSentencePrediction",
                  "ForMaskedImageModeling", "ForAudioClassification", "ForCTC")


@dataclass(frozen=True)
class Resolved:
    """What intake builds for one config: the architecture, the task and the transformers class to load."""

    arch: Arch
    task: Task
    class_name: str | None  # the transformers class named in config.json (None: the Auto class of the task)

    @property
    def outputs(self) -> tuple[str, ...]:
        return TASK_OUTPUTS[self.task]


def arch_of(model_type: str | None) -> Arch:
    """The ``Arch`` of a model type (an unknown text model type gets the defaults, so new encoders still try)."""
    return ARCHS.get(model_type or "", Arch(model_type or "unknown"))


def resolve(config: dict, *, where: str) -> Resolved:
    """The task and class for a ``config.json`` dict.

    Raises:
        UnsupportedError: a head edgeopt has no wrapper for, or an encoder-decoder text model (what to do).
    """
    model_type = config.get("model_type")
    arch = arch_of(model_type)
    class_name = (config.get("architectures") or [None])[0]
    name = class_name or ""
    if any(name.endswith(s) for s in _REFUSED_HEADS):
        raise UnsupportedError(f"{where}: {name} is not packaged by edgeopt (tasks: "
                               f"{', '.join(t.value for t in Task)}); save the base model "
                               f"({name.split('For')[0]}Model) to get its embeddings, or wrap the head in "
                               "file.py:factory")
    if arch.modality is Modality.SPEECH:
        return Resolved(arch, Task.SPEECH_ENCODER, class_name)
    task = next((t for suffix, t in HEADS if name.endswith(suffix)), None)
    if task is None and config.get("is_decoder") and arch.modality is Modality.TEXT:
        task = Task.CAUSAL_LM
    if task is None:
        if config.get("is_encoder_decoder") and not name.endswith("EncoderModel"):
            raise UnsupportedError(
                f"{where}: {name or model_type} is an encoder-decoder model; edgeopt packages encoder-only and "
                "decoder-only networks. For embeddings from its encoder, save the encoder alone (e.g. "
                "T5EncoderModel.from_pretrained(dir).save_pretrained(out)) and pass that directory")
        task = Task.IMAGE_EMBEDDING if arch.modality is Modality.VISION else Task.EMBEDDING
    return Resolved(arch, task, class_name)


def check_build(model_type: str | None, runtime: Runtime, precision: Precision) -> None:
    """Raise UnsupportedError, before any export work, for a (runtime, precision) this architecture cannot be
    built in here: the reason and what to use instead (the formats and precisions that do build)."""
    arch = arch_of(model_type)
    for rt, precisions, reason in arch.refusals:
        if rt is runtime and precision in precisions:
            blocked = {(r, p) for r, ps, _ in arch.refusals for p in ps}
            other = [r.value for r in Runtime if (r, precision) not in blocked]
            raise UnsupportedError(f"{runtime.value}: {model_type} at {precision.value} is not built: {reason}; "
                                   f"use --format {' or '.join(other)} for {precision.value}, or "
                                   f"--precision fp32 in {runtime.value}")
