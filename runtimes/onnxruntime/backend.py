"""ONNX Runtime adapter for the edgeopt device runner (``runner/onnxruntime/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md):
``name``, ``pip_package``, ``version() -> str``, ``load(path, threads) -> model`` where the model has
``input_names``, ``output_names`` and ``run(feeds) -> list of numpy arrays`` in ``output_names`` order.
onnxruntime is imported inside the functions, so a missing install surfaces as an ImportError from
``version()`` that the runner turns into exit 4 with the pip command.
"""

from __future__ import annotations

name = "onnxruntime"
pip_package = "onnxruntime"


def version():
    """The installed onnxruntime version (raises ImportError when it is not installed)."""
    import onnxruntime

    return onnxruntime.__version__


class OrtModel:
    """One InferenceSession on the CPU execution provider."""

    def __init__(self, session):
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds):
        """Run once; ``feeds`` maps input name to array. Returns outputs in ``output_names`` order."""
        return self._session.run(self.output_names, feeds)


def load(path, threads):
    """An ``OrtModel`` for the .onnx file at ``path`` using ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One model run at a time: inter-op parallelism would only add threads that compete with intra-op ones.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the runner's stderr is for its own one-line messages
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    return OrtModel(session)
