"""nn.Module wrappers that give every model one calling convention: positional tensors in, a tuple out.

Imported only when a model is loaded (it imports torch).
"""

from __future__ import annotations

import torch


class EncoderWrapper(torch.nn.Module):
    """Transformer encoder → (sentence_embedding [batch, hidden × modes], last_hidden_state [batch, seq, hidden]).

    The sentence embedding is what sentence-transformers computes for the model: each pooling mode of its
    ``1_Pooling/config.json`` over the attention-masked hidden states (mean by default), concatenated in
    sentence-transformers' order, then L2-normalised when its pipeline ends in Normalize.
    """

    def __init__(self, model: torch.nn.Module, normalize: bool, pooling: tuple[str, ...] = ("mean",)):
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.pooling = tuple(pooling)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        pooled = []
        for mode in self.pooling:
            if mode == "cls":
                pooled.append(hidden[:, 0])
            elif mode == "max":
                pooled.append(torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).max(dim=1).values)
            elif mode == "mean":
                pooled.append((hidden * mask).sum(dim=1) / counts)
            elif mode == "mean_sqrt_len":
                pooled.append((hidden * mask).sum(dim=1) / counts.sqrt())
            elif mode == "weightedmean":
                weights = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1) * mask
                pooled.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9))
            elif mode == "lasttoken":
                last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
                pooled.append(hidden[torch.arange(hidden.shape[0]), last])
            else:  # the intake only passes the modes above
                raise ValueError(f"unknown pooling mode {mode!r}")
        out = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2.0, dim=-1)
        return out, hidden


class HeadWrapper(torch.nn.Module):
    """A text model with a task head (sequence / token classification, masked LM) → (logits,)."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs):
        return (self.model(**dict(zip(self.input_names, inputs))).logits,)


class VisionWrapper(torch.nn.Module):
    """An image model → (class_logits,) for a classifier, else (image_embedding [batch, hidden] = the first
    (CLS) token's final state, last_hidden_state)."""

    def __init__(self, model: torch.nn.Module, classify: bool):
        super().__init__()
        self.model = model
        self.classify = classify

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        if self.classify:
            return (out.logits,)
        return out.last_hidden_state[:, 0], out.last_hidden_state


class SpeechEncoderWrapper(torch.nn.Module):
    """The encoder of a speech model (Whisper): log-mel ``input_features`` → (last_hidden_state,)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.model = encoder

    def forward(self, input_features):
        return (self.model(input_features=input_features).last_hidden_state,)


class CausalLMWrapper(torch.nn.Module):
    """Causal LM → (logits,) over the whole sequence, without a cache (the KV-cache export is separate)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits,)


class TupleOutput(torch.nn.Module):
    """A user module that returns a tensor or a list → the same outputs as a tuple."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        out = self.inner(*args)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)
