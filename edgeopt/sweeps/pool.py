"""Where cells run: ``LocalPool`` (child processes on this machine, memory-aware) or ``RayPool`` (Ray tasks).

Both take the same job (a cell payload, its log path, its environment, its estimated peak memory) and hand
back what ``edgeopt.sweeps.cell.run_attempt`` returned, so a cell is the same build on either. A crash of
the process running a cell comes back as ``status: killed``; the sweep decides about the retry.
"""

from __future__ import annotations

import threading
from pathlib import Path

MB = 1024 * 1024


def estimate_peak_bytes(model: str, fmt: str | None, precision: str | None) -> int:
    """The planner's estimate of a build's peak host memory (``edgeopt.packagers.lm.build_memory``), from the
    fp32 size of the weights read from the safetensors headers (no torch, nothing loaded). Without a format or
    precision the most demanding pair is assumed; a factory or hub model (size unknown) counts the base only."""
    from edgeopt.formats import Runtime
    from edgeopt.packagers.lm import BUILD_MEMORY_BASE, BUILD_MEMORY_FACTORS, build_memory

    fp32 = _fp32_bytes(model)
    if fp32 is None:
        return BUILD_MEMORY_BASE
    pairs = [(r, p) for r, p in BUILD_MEMORY_FACTORS if (fmt is None or r is Runtime(fmt))
             and (precision is None or p == precision)] or [(Runtime(fmt) if fmt else Runtime.ONNXRUNTIME,
                                                              precision or "fp32")]
    return max(build_memory(r, p, fp32) for r, p in pairs)


def _fp32_bytes(model: str) -> int | None:
    from edgeopt import models
    from edgeopt.errors import InputFileError

    try:
        path = models.default_model_dir() if model == "default" else Path(model)
    except Exception:  # noqa: BLE001 - the demo model missing: the build reports it
        return None
    if ".py:" in model or not path.is_dir():
        return None
    total = 0
    for f in path.glob("*.safetensors"):
        try:
            header, _ = models.read_safetensors_header(f)
        except InputFileError:
            return None
        for name, t in header.items():
            if name != "__metadata__" and isinstance(t, dict):
                numel = 1
                for d in t.get("shape", []):
                    numel *= int(d)
                total += numel * 4
    if total == 0:  # pickle checkpoints: their size, as if fp32
        total = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
    return total


class LocalPool:
    """At most ``workers`` cells at once, and no more together than ``memory_bytes`` of estimated peak (a cell
    bigger than the budget runs alone). Each cell is its own child process."""

    name = "local"

    def __init__(self, workers: int, memory_bytes: int):
        from concurrent.futures import ThreadPoolExecutor

        self.workers = max(1, workers)
        self.memory_bytes = memory_bytes
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgeopt-sweep")
        self._cond = threading.Condition()
        self._used = 0
        self._running = 0
        self._procs: set = set()
        self._stopping = False

    def describe(self) -> str:
        return (f"local pool: {self.workers} worker{'s' if self.workers > 1 else ''}, "
                f"{self.memory_bytes / MB / 1024:.1f} GB of memory for builds")

    def threads_per_cell(self) -> int:
        from edgeopt.pipeline import usable_cpus

        return max(1, usable_cpus() // self.workers)

    def submit(self, payload: dict, log_path: str, env: dict, need_bytes: int):
        return self._executor.submit(self._run, payload, log_path, env, need_bytes)

    def _run(self, payload, log_path, env, need_bytes) -> dict:
        from edgeopt.sweeps.cell import run_attempt

        with self._cond:
            while self._running and self._used + need_bytes > self.memory_bytes and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return {"status": "interrupted", "exit_code": 130, "error": "not started (interrupted)",
                        "bundle": None, "seconds": 0.0}
            self._used += need_bytes
            self._running += 1
        try:
            return run_attempt(payload, log_path, env, on_start=self._started)
        finally:
            with self._cond:
                self._used -= need_bytes
                self._running -= 1
                self._cond.notify_all()

    def _started(self, proc) -> None:
        with self._cond:
            self._procs = {p for p in self._procs if p.poll() is None} | {proc}
            if self._stopping:
                from edgeopt.sweeps.cell import stop

                stop(proc)

    def wait(self, handles: list, timeout_s: float = 0.5) -> list[tuple[object, dict]]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as futures_wait

        done, _ = futures_wait(handles, timeout=timeout_s, return_when=FIRST_COMPLETED)
        out = []
        for f in done:
            try:
                out.append((f, f.result()))
            except Exception as e:  # noqa: BLE001 - the thread that ran the cell failed: a crash, retried
                out.append((f, {"status": "killed", "exit_code": None, "error": f"{type(e).__name__}: {e}",
                                "bundle": None, "seconds": 0.0}))
        return out

    def stop_all(self, handles: list = ()) -> None:
        """Ctrl-C: no new cell starts; each running one is stopped as Ctrl-C stops `edgeopt package`."""
        from edgeopt.sweeps.cell import stop

        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            procs = list(self._procs)
        for p in procs:
            stop(p)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class RayPool:
    """Cells as Ray tasks on the cluster at ``address``: one CPU each and their estimated peak memory as Ray's
    ``memory`` resource, so Ray places them where they fit. The bundles are written to ``out`` by whichever
    node runs the cell: ``out`` must be a folder every node sees (one machine, or a shared file system)."""

    name = "ray"

    def __init__(self, address: str):
        from edgeopt.errors import DeviceError, MissingDependencyError

        try:
            import ray
        except ImportError:
            raise MissingDependencyError("ray", "ray", "'ray[default]>=2.50'") from None
        self._ray = ray
        try:
            # A loopback cluster (nodes started with --node-ip-address 127.0.0.1): this driver must be on it too.
            loopback = {"_node_ip_address": "127.0.0.1"} if address.startswith(("127.", "localhost")) else {}
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False, **loopback)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DeviceError(f"--ray {address}: cannot connect to the Ray cluster ({str(e).splitlines()[0][:200]});"
                              " start it with `ray start --head` and pass its address (host:port)") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.max_node_memory = max((int(n["Resources"].get("memory", 0)) for n in nodes), default=0)
        self.cpus = int(ray.cluster_resources().get("CPU", 1))
        self.node_count = len(nodes)
        self._task = ray.remote(max_retries=0)(_ray_cell)  # the sweep retries a crashed cell once, itself

    def describe(self) -> str:
        return f"Ray cluster: {self.node_count} node{'s' if self.node_count > 1 else ''}, {self.cpus} CPUs"

    def threads_per_cell(self) -> int:
        return 1  # each task holds one CPU of its node

    def submit(self, payload: dict, log_path: str, env: dict, need_bytes: int):
        need = min(need_bytes, self.max_node_memory) if self.max_node_memory else need_bytes
        return self._task.options(num_cpus=1, memory=need).remote(payload, log_path, env)

    def wait(self, handles: list, timeout_s: float = 0.5) -> list[tuple[object, dict]]:
        ray = self._ray
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout_s)
        out = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except ray.exceptions.TaskCancelledError:
                out.append((ref, {"status": "interrupted", "exit_code": 130, "error": "cancelled", "bundle": None,
                                  "seconds": 0.0}))
            except ray.exceptions.RayError as e:  # the worker or its node died mid-cell
                out.append((ref, {"status": "killed", "exit_code": None, "bundle": None, "seconds": 0.0,
                                  "error": f"Ray: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}))
        return out

    def stop_all(self, handles: list = ()) -> None:
        for ref in handles:
            try:
                self._ray.cancel(ref)  # KeyboardInterrupt in the task: its child is stopped like Ctrl-C
            except Exception:  # noqa: BLE001 - already finished
                pass
        if handles:
            self._ray.wait(list(handles), num_returns=len(handles), timeout=60)

    def close(self) -> None:
        self._ray.shutdown()


def _ray_cell(payload: dict, log_path: str, env: dict) -> dict:
    import ray

    from edgeopt.sweeps.cell import run_attempt

    return {**run_attempt(payload, log_path, env), "node": ray.get_runtime_context().get_node_id()}
