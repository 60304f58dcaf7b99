"""nn.Module wrappers that give every model one calling convention: positional tensors in, a tuple out.

Imported only when a model is loaded (it imports torch).
"""

from __future__ import annotations

import torch


class EncoderWrapper(torch.nn.Module):
    """Transformer encoder → (sentence_embedding [batch, hidden], last_hidden_state [batch, seq, hidden]).

    The sentence embedding is the attention-masked mean of the hidden states, L2-normalised when the
    model's sentence-transformers config asks for it — what a user of an embedding model consumes.
    """

    def __init__(self, model: torch.nn.Module, normalize: bool):
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled, hidden


class CausalLMWrapper(torch.nn.Module):
    """Causal LM → (logits,) over the whole sequence, without a cache (the KV-cache export is separate)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits,)


class LogitsWrapper(torch.nn.Module):
    """Sequence classifier → (logits,)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask).logits,)


class TupleOutput(torch.nn.Module):
    """A user module that returns a tensor or a list → the same outputs as a tuple."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        out = self.inner(*args)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)
