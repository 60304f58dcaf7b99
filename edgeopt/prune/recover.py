"""Recovery: a short distillation of the pruned model towards the original, bounded by wall-clock seconds.

The student is the pruned model, the teacher the unpruned one, the data the calibration inputs. Encoders
match the teacher's last hidden state (MSE over kept tokens, relative to the teacher's mean square) plus
1 − cosine of the first output (the sentence embedding); decoders match the teacher's next-token
distribution (KL over kept tokens). Embeddings and the LM head stay frozen: they hold most of a small
model's parameters, were not pruned, and training them on a few hundred tokens only overfits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel
    from edgeopt.verify import Fidelity

LEARNING_RATE = 5e-5  # AdamW; on MiniLM (keep 75%, drop 1, 20 s) 5e-5 and 1e-4 gained alike (0.827 -> 0.890), 2e-4 less (0.877)
BATCH = 8
_CACHE_LIMIT = 64_000_000  # teacher output elements kept in memory; beyond it the teacher runs per step


@dataclass(frozen=True)
class Recovery:
    seconds: float
    steps: int
    first_loss: float | None
    last_loss: float | None


def fidelity(reference: list[list[Any]], loaded: LoadedModel, inputs: Sequence[tuple], *, decoder: bool) -> Fidelity:
    """Outputs of ``loaded`` on ``inputs`` against ``reference`` (the unpruned model's, as numpy)."""
    import torch

    from edgeopt.verify import compare

    with torch.no_grad():
        outputs = [[t.numpy() for t in loaded.module(*s)] for s in inputs]
    return compare(reference, outputs, loaded.output_names, reference_name="unpruned fp32", logits=decoder)


def reference_outputs(loaded: LoadedModel, inputs: Sequence[tuple]) -> list[list[Any]]:
    import torch

    with torch.no_grad():
        return [[t.numpy() for t in loaded.module(*s)] for s in inputs]


def _batches(calibration: Sequence[tuple]) -> list[tuple]:
    """Stack samples of equal shapes into batches of ``BATCH`` (a sample of another shape starts a new one)."""
    import torch

    out, group = [], []
    for sample in calibration:
        if group and (len(group) == BATCH or any(a.shape[1:] != b.shape[1:] for a, b in zip(group[0], sample))):
            out.append(tuple(torch.cat(parts) for parts in zip(*group)))
            group = []
        group.append(sample)
    if group:
        out.append(tuple(torch.cat(parts) for parts in zip(*group)))
    return out


def _loss(student_out, teacher_out, mask, *, decoder: bool):
    import torch.nn.functional as F

    keep = mask.bool() if mask is not None else None
    if decoder:
        s, t = student_out[0], teacher_out[0]
        if keep is not None:
            s, t = s[keep], t[keep]
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    hidden_s, hidden_t = student_out[-1], teacher_out[-1]
    if keep is not None:
        hidden_s, hidden_t = hidden_s[keep], hidden_t[keep]
    mse = F.mse_loss(hidden_s, hidden_t) / hidden_t.pow(2).mean().clamp(min=1e-12)
    cos = F.cosine_similarity(student_out[0].flatten(1), teacher_out[0].flatten(1), dim=-1)
    return mse + (1.0 - cos).mean()


def distill(teacher: LoadedModel, student: LoadedModel, calibration: Sequence[tuple], seconds: float,
            *, decoder: bool) -> Recovery:
    """Train ``student`` (in place) towards ``teacher`` on ``calibration`` for at most ``seconds``.

    A step is started only while the time left exceeds the last step's duration, so the budget holds
    to within the setup (batching, the teacher's outputs).
    """
    import torch

    start = time.monotonic()
    deadline = start + seconds
    batches = _batches(calibration)
    mask_at = student.input_names.index("attention_mask") if "attention_mask" in student.input_names else None
    with torch.no_grad():
        size = sum(o.numel() for o in teacher.module(*batches[0])) * len(batches)
        cached = [teacher.module(*b) for b in batches] if size <= _CACHE_LIMIT else None
    model = student.module.model
    frozen = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
              for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in frozen]
    was_trainable = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    steps, first, last, step_s = 0, None, None, 0.0
    try:
        while time.monotonic() + step_s < deadline:
            t0 = time.monotonic()
            i = steps % len(batches)
            batch = batches[i]
            if cached is not None:
                target = cached[i]
            else:
                with torch.no_grad():
                    target = teacher.module(*batch)
            loss = _loss(student.module(*batch), target, batch[mask_at] if mask_at is not None else None,
                         decoder=decoder)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            first = value if first is None else first
            last = value
            steps += 1
            step_s = time.monotonic() - t0
    finally:
        for p in model.parameters():
            p.requires_grad_(was_trainable[id(p)])
            p.grad = None
        student.module.eval()
    return Recovery(seconds=time.monotonic() - start, steps=steps, first_loss=first, last_loss=last)
