"""Per-layer quantization sensitivity, measured on calibration data in eager PyTorch.

Each linear layer is quantized alone — int8 per-channel symmetric weights and per-tensor asymmetric
uint8 input activations, what the runtimes' dynamic int8 kernels do — and the primary output is
compared with the fp32 output. Layers whose activations carry outliers (in BERT-family models the FFN
down-projection after GELU) stand out; the planner keeps the worst at float before giving up on int8.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    cosine_loss: float  # 1 - mean cosine of the primary output with only this layer quantized

    def to_dict(self) -> dict:
        return {"name": self.name, "cosine_loss": self.cosine_loss}


def linear_layers(module) -> list[tuple[str, object]]:
    """(name, layer) for every nn.Linear and transformers Conv1D (GPT-2) in ``module``."""
    import torch

    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    ]


def measure(module, calibration: list[tuple], *, weight_bits: int = 8) -> list[LayerSensitivity]:
    """Sensitivity of every linear layer, most sensitive first."""
    import torch

    with torch.no_grad():
        reference = [module(*sample)[0].double() for sample in calibration]
        results = []
        for name, layer in linear_layers(module):
            original = layer.weight.data
            # transformers' Conv1D stores [in, out]; its output channels are dim 1.
            channel_dim = 1 if type(layer).__name__ == "Conv1D" else 0
            layer.weight.data = fake_quantize_weight(original, weight_bits, channel_dim)
            handle = layer.register_forward_pre_hook(_quantize_input_hook)
            try:
                outs = [module(*sample)[0].double() for sample in calibration]
            finally:
                handle.remove()
                layer.weight.data = original
            cos = torch.stack([
                torch.nn.functional.cosine_similarity(r.flatten(), o.flatten(), dim=0) for r, o in zip(reference, outs)
            ]).mean()
            results.append(LayerSensitivity(name, float(1.0 - cos)))
    return sorted(results, key=lambda s: s.cosine_loss, reverse=True)


def fake_quantize_weight(w, bits: int, channel_dim: int):
    """Symmetric per-channel quantize → dequantize."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    reduce_dims = [d for d in range(w.dim()) if d != channel_dim]
    scale = w.abs().amax(dim=reduce_dims, keepdim=True).clamp(min=1e-12) / qmax
    return torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale


def _quantize_input_hook(_layer, args):
    import torch

    x = args[0]
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    return ((q - zero) * scale,) + tuple(args[1:])
