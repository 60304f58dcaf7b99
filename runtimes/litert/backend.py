"""LiteRT adapter for the edgeopt device runner (``runner/litert/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md): ``name``,
``pip_package``, ``version() -> str``, ``load(path, threads) -> model`` where the model has
``input_names``, ``output_names`` and ``run(feeds) -> list of numpy arrays`` in ``output_names`` order.

The interpreter comes from ``ai_edge_litert`` and, on boards that only have the older wheel, from
``tflite_runtime`` (2.14 and older crash under numpy 2: pin ``numpy<2`` there). Either is imported inside
the functions, so a missing install surfaces as an ImportError that the runner turns into exit 4.
Runs on Python 3.9+ with numpy: no torch, no edgeopt.
"""

from __future__ import annotations

name = "litert"
pip_package = "ai-edge-litert"
SIGNATURE = "serving_default"  # what litert-torch names the one signature it writes


def _interpreter_module():
    """``ai_edge_litert.interpreter`` or, failing that, ``tflite_runtime.interpreter``."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError:
            raise ImportError("neither ai_edge_litert nor tflite_runtime is installed") from None
    return interpreter


def version():
    """``ai-edge-litert X`` or ``tflite-runtime X``, whichever provides the interpreter."""
    module = _interpreter_module()
    package = "ai-edge-litert" if module.__name__.startswith("ai_edge_litert") else "tflite-runtime"
    try:
        from importlib.metadata import version as dist_version

        return f"{package} {dist_version(package)}"
    except Exception:  # noqa: BLE001 - metadata missing on some board images; the name alone still helps
        return package


class LiteRTModel:
    """One interpreter, driven through its signature (named I/O) when it has one, by position otherwise.

    edgeopt names the signature's inputs and outputs after the model's (``input_ids``,
    ``sentence_embedding``), so the runner matches them by name; a .tflite without a signature is fed
    in manifest order and its outputs are returned in the interpreter's order.
    """

    def __init__(self, interpreter):
        self._interpreter = interpreter
        signatures = interpreter.get_signature_list()
        self._runner = None
        if SIGNATURE in signatures or len(signatures) == 1:
            key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
            self._runner = interpreter.get_signature_runner(key)
            self._inputs = self._runner.get_input_details()
            self.input_names = sorted(signatures[key]["inputs"], key=_natural)
            self.output_names = sorted(signatures[key]["outputs"], key=_natural)
        else:
            interpreter.allocate_tensors()
            self._inputs = interpreter.get_input_details()
            self._outputs = interpreter.get_output_details()
            self.input_names = [d["name"] for d in self._inputs]
            self.output_names = [d["name"] for d in self._outputs]

    def run(self, feeds):
        """Run once. ``feeds`` maps input name to array (or is in manifest order); returns output arrays."""
        import numpy as np

        if self._runner is not None:
            named = self._by_name(feeds)
            args = {k: np.asarray(v, dtype=self._inputs[k]["dtype"]) for k, v in named.items()}
            out = self._runner(**args)
            return [out[k] for k in self.output_names]
        for detail, value in zip(self._inputs, self._by_position(feeds)):
            self._interpreter.set_tensor(detail["index"], np.asarray(value, dtype=detail["dtype"]))
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(d["index"]) for d in self._outputs]

    def _by_name(self, feeds):
        if all(k in self._inputs for k in feeds):
            return dict(feeds)
        return dict(zip(self.input_names, self._by_position(feeds)))

    def _by_position(self, feeds):
        if len(feeds) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(feeds)}")
        return list(feeds.values())


def _natural(text):
    """``args_2`` before ``args_10``: converters number unnamed I/O by position."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load(path, threads):
    """A ``LiteRTModel`` for the .tflite at ``path`` on ``threads`` CPU threads (XNNPACK, the default delegate)."""
    module = _interpreter_module()
    return LiteRTModel(module.Interpreter(model_path=path, num_threads=threads))
