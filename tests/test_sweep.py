"""edgeopt sweep (issue 19): examples/sweep.yaml on the local pool and on a real loopback Ray cluster (a head and
a second worker node, bounded, torn down by pid), the same bundles from both; a cell process or a Ray worker
killed mid-bundle is survived (one retry, no half bundle); user failures reported, not retried; Ctrl-C;
re-runs skip matching bundles; benchmarks one job per device at a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_bert

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "sweep.yaml"
RAY = Path(sys.executable).parent / "ray"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "EDGEOPT_DEBUG": "1"}


def _sweep(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt.cli", "sweep", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _results(out: Path) -> dict:
    return json.loads((out / ".sweep" / "sweep.json").read_text())


def _staging(out: Path) -> list[Path]:
    return sorted(out.glob("*/.*.staging-*"))


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """examples/sweep.yaml beside the two tiny BERTs it names (models/ relative to the spec)."""
    root = tmp_path_factory.mktemp("sweep-spec")
    shutil.copy(EXAMPLE, root / "sweep.yaml")
    (root / "models").mkdir()
    (root / "models" / "tiny-bert").symlink_to(tiny_bert_dir)
    make_tiny_bert(root / "models" / "tiny-bert-1layer", seed=1, layers=1)
    return root


@pytest.fixture(scope="module")
def local_run(spec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-local")
    proc = _sweep(str(spec_dir / "sweep.yaml"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, _cells(out)  # the cells as this run left them (a later test re-runs into out)


def _cells(out: Path) -> dict:
    return {c["key"]: c for c in _results(out)["cells"]}


def test_example_on_the_local_pool_builds_benches_and_reports(local_run):
    from edgeopt.bundle import Bundle, verify_files

    out, proc, cells = local_run
    assert len(cells) == 4 and {c["profile"] for c in cells.values()} == {"desktop-cpu", "embedded-board"}
    for c in cells.values():
        assert c["status"] == "ok" and c["exit_code"] == 0 and c["attempts"] == 1 and not c["retried"], c
        b = Bundle.open(c["bundle"])
        verify_files(b.path, b.manifest)  # every file present, sha256 as listed: a whole bundle
        assert c["artifact"]["runtime"] == "onnxruntime" and c["artifact"]["sha256"] == b.manifest["artifacts"][0]["sha256"]
        assert c["fidelity"]["min_cosine"] > 0.999  # fp32 onnx against fp32 torch
        job = c["bench"]["local"]
        assert job["status"] == "ok" and 0 < job["p50_ms"] < 1000 and Path(job["stored"]).is_file()
    # one job at a time on the device: the four benchmarks on `local` never overlap
    spans = sorted((c["bench"]["local"]["start"], c["bench"]["local"]["end"]) for c in cells.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    html = (out / "report.html").read_text()
    for c in cells.values():
        assert Path(c["bundle"]).name in html
    assert "tiny-bert-1layer" in proc.stdout and "report:" in proc.stdout


def test_rerun_skips_matching_bundles_and_rebuilds_a_changed_one(local_run, spec_dir, tmp_path):
    out = tmp_path / "copy"  # a copy of the local run's out: the Ray test compares against the original
    shutil.copytree(local_run[0], out)
    before = local_run[2]
    t = time.monotonic()
    proc = _sweep(str(spec_dir / "sweep.yaml"), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {c["key"]: c for c in json.loads(proc.stdout)["cells"]}
    assert {c["status"] for c in cells.values()} == {"skipped"}
    assert all(c["bench"]["local"]["status"] == "stored" for c in cells.values())
    assert {k: c["artifact"]["sha256"] for k, c in cells.items()} == {k: c["artifact"]["sha256"] for k, c in before.items()}
    assert time.monotonic() - t < 60  # nothing built, nothing benchmarked
    # a different profile content under the same name: that cell is rebuilt, the others stay skipped
    prof = yaml.safe_load((REPO / "profiles" / "desktop-cpu.yaml").read_text())
    prof["limits"]["model_ram_mb"] += 1
    (tmp_path / "desktop-cpu.yaml").write_text(yaml.safe_dump(prof))
    spec = yaml.safe_load((spec_dir / "sweep.yaml").read_text())
    spec.update(models=[str(spec_dir / "models" / "tiny-bert")], profiles=[str(tmp_path / "desktop-cpu.yaml")],
                bench=None)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = _sweep(str(tmp_path / "s.yaml"), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cell,) = json.loads(proc.stdout)["cells"]
    assert cell["status"] == "ok" and cell["attempts"] == 1
    assert "the profile changed" in Path(out, ".sweep", "logs", f"{cell['key']}.1.log").read_text()


def test_bad_spec_is_exit_2_with_every_problem_before_any_work(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "models": ["nowhere/at-all", "missing.py:make"], "profiles": ["desktop-cpu", "arm-mobil"],
        "formats": ["tfite"], "precisions": ["int3"], "colour": "red",
        "bench": {"devices": ["local", "local", "ftp://x"], "runs": 0}}))
    t = time.monotonic()
    proc = _sweep(str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    for needle in ("unknown key 'colour'", "models[0]: model 'nowhere/at-all'", "models[1]:", "missing.py",
                   "profiles[1]: unknown profile 'arm-mobil'", "did you mean 'arm-mobile'", "formats[0]:",
                   "precisions[0]:", "bench.devices[1]: 'local' is the same device", "bench.devices[2]:",
                   "bench.runs must be an integer >= 1, got 0", "9 problems"):
        assert needle in err, (needle, err)
    assert not (tmp_path / "out").exists() and time.monotonic() - t < 20
    proc = _sweep(str(tmp_path / "none.yaml"))
    assert proc.returncode == 2 and "no such sweep spec file" in proc.stderr


def test_user_failure_is_reported_not_retried(tmp_path, tiny_bert_dir):
    prof = yaml.safe_load((REPO / "profiles" / "desktop-cpu.yaml").read_text())
    prof.update(name="no-room")
    prof["limits"]["model_ram_mb"] = 1  # nothing fits in 1 MB: exit 5
    (tmp_path / "no-room.yaml").write_text(yaml.safe_dump(prof))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"models": [str(tiny_bert_dir)], "formats": ["onnx"],
                                                     "profiles": ["desktop-cpu", "no-room.yaml"]}))
    proc = _sweep(str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 5, proc.stderr[-3000:]
    ok, bad = json.loads(proc.stdout)["cells"]
    assert ok["status"] == "ok" and Path(ok["bundle"], "manifest.json").is_file()
    assert bad["status"] == "failed" and bad["exit_code"] == 5 and bad["attempts"] == 1 and not bad["retried"]
    assert "no candidate fits" in bad["error"] and bad["bundle"] is None
    assert not list((tmp_path / "out").glob("*/tiny-bert-no-room"))


def _spec_for(tmp_path: Path, spec_dir: Path, models: list[str], profiles: list[str]) -> Path:
    spec = yaml.safe_load((spec_dir / "sweep.yaml").read_text())
    spec.update(models=[str(spec_dir / "models" / m) for m in models], profiles=profiles, bench=None)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "s.yaml"


def _kill_when_building(proc: subprocess.Popen, out: Path, parent: bool = False, timeout: float = 240) -> int:
    """SIGKILL the process writing the first staging folder (the cell process is the writer; ``parent``: the Ray
    worker that started it). Returns the pid killed."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for st in _staging(out):
            pid = int(st.name.rsplit("-", 1)[1])
            try:
                victim = psutil.Process(pid).parent() if parent else psutil.Process(pid)
                assert "edgeopt" in " ".join(psutil.Process(pid).cmdline())
                victim.kill()
                return victim.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no cell started building: {proc.poll()}")


def _assert_survived(out: Path, key_model: str, killed: int, proc: subprocess.Popen) -> None:
    from edgeopt.bundle import Bundle, verify_files

    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0 and stdout.strip(), stderr[-3000:]
    # Ray's raylet prints "A worker died..." on the driver's stdout before the JSON: read from the JSON's start
    cells = json.loads(stdout[stdout.index("{\n"):])["cells"]
    retried = [c for c in cells if c["retried"]]
    assert len(retried) == 1 and retried[0]["attempts"] == 2 and retried[0]["status"] == "ok", cells
    assert "killed" in retried[0]["first_error"] or "Ray" in retried[0]["first_error"]
    assert all(c["status"] == "ok" for c in cells)
    for c in cells:
        b = Bundle.open(c["bundle"])
        verify_files(b.path, b.manifest)
    assert _staging(out) == [] and not any(p.name.startswith(".") and "staging" in p.name for p in out.rglob("*"))
    import psutil

    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE


def test_a_cell_process_killed_mid_bundle_is_retried_once(tmp_path, spec_dir):
    spec = _spec_for(tmp_path, spec_dir, ["tiny-bert-1layer"], ["desktop-cpu", "embedded-board"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt.cli", "sweep", str(spec), "--out", str(out), "--json"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_when_building(proc, out)
    _assert_survived(out, "tiny-bert-1layer", killed, proc)


def test_ctrl_c_stops_the_sweep_and_keeps_finished_bundles(tmp_path, spec_dir):
    from edgeopt.bundle import Bundle, verify_files

    spec = _spec_for(tmp_path, spec_dir, ["tiny-bert-1layer"], ["desktop-cpu", "embedded-board", "arm-mobile"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt.cli", "sweep", str(spec), "--out", str(out), "--jobs", "1"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the first bundle done and the second one being written
        if list(out.glob("*/*/manifest.json")) and _staging(out):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(proc.communicate(timeout=60))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    cells = _results(out)["cells"]
    done = [c for c in cells if c["status"] == "ok"]
    assert len(done) >= 1 and any(c["status"] == "interrupted" for c in cells), cells
    for c in done:
        b = Bundle.open(c["bundle"])
        verify_files(b.path, b.manifest)
    assert _staging(out) == []
    assert len(list(out.glob("*/*/manifest.json"))) == len(done)  # no half bundle of the interrupted cells


# --- a real Ray cluster on loopback --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], log: Path) -> subprocess.Popen:
    # --block: the node's processes are children of this one, so the finalizer stops exactly them, by pid
    # (`ray stop` would stop every Ray process of this user on the machine, other people's clusters too).
    return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus", "1", "--object-store-memory",
                             str(100 * 1024 * 1024), "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                             "--dashboard-agent-listen-port", str(_free_port()), *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**ENV, "RAY_USAGE_STATS_ENABLED": "0"},
                            start_new_session=True)


def _stop_nodes(nodes: list[subprocess.Popen]) -> None:
    import psutil

    family = []
    for n in nodes:
        try:
            family += [psutil.Process(n.pid), *psutil.Process(n.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for n in reversed(nodes):
        if n.poll() is None:
            n.send_signal(signal.SIGINT)  # `ray start --block` shuts its node down on Ctrl-C
    for n in nodes:
        try:
            n.wait(30)
        except subprocess.TimeoutExpired:
            pass
    for p in family:  # whatever is left of the processes we started, by pid
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_cluster():
    if not RAY.is_file():
        pytest.skip("ray is not installed: pip install 'edgeopt[ray]'")
    # Short: Ray's unix sockets live under it and a socket path has at most 107 characters (tmp_path is longer).
    temp = Path(tempfile.mkdtemp(prefix="eo-ray-", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_ray_node(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)],
                       temp / "head.log")]
    try:
        _wait_nodes(address, 1, temp, nodes)
        nodes.append(_ray_node(["--address", address], temp / "worker.log"))
        _wait_nodes(address, 2, temp, nodes)
        yield address
    finally:
        _stop_nodes(nodes)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_nodes(address: str, count: int, temp: Path, nodes, timeout: float = 120) -> None:
    probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR', _node_ip_address='127.0.0.1'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    log = temp / ("head.log" if count == 1 else "worker.log")
    while time.monotonic() < deadline and "Ray runtime started" not in log.read_text():
        if any(n.poll() is not None for n in nodes):
            break
        time.sleep(0.5)
    while time.monotonic() < deadline:
        if any(n.poll() is not None for n in nodes):
            raise AssertionError("a Ray node exited: " + "".join(p.read_text()[-2000:] for p in temp.glob("*.log")))
        r = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, env=ENV,
                           timeout=30, check=False)
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster did not come up with {count} nodes")


def test_example_on_ray_gives_the_local_pools_bundles(ray_cluster, spec_dir, local_run, tmp_path):
    _, _, local = local_run
    out = tmp_path / "out"
    proc = _sweep(str(spec_dir / "sweep.yaml"), "--out", str(out), "--ray", ray_cluster, "--no-bench", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["runner"] == "ray"
    ray_cells = {c["key"]: c for c in result["cells"]}
    assert ray_cells.keys() == local.keys()
    assert len({c["node"] for c in ray_cells.values()}) == 2  # both nodes built cells
    for key, c in ray_cells.items():
        assert c["status"] == "ok" and c["attempts"] == 1
        assert c["artifact"] == local[key]["artifact"], key  # the same model.onnx, byte for byte
        for k, v in local[key]["fidelity"].items():
            assert c["fidelity"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (key, k)
        ours = json.loads(Path(c["bundle"], "manifest.json").read_text())
        theirs = json.loads(Path(local[key]["bundle"], "manifest.json").read_text())
        assert ours["model"] == theirs["model"] and ours["profile"] == theirs["profile"]
        assert [(r["candidate"], r["status"]) for r in ours["plan"]["rows"]] == \
            [(r["candidate"], r["status"]) for r in theirs["plan"]["rows"]]
    assert (out / "report.html").is_file()


def test_a_ray_worker_killed_mid_cell_is_survived(ray_cluster, spec_dir, tmp_path):
    spec = _spec_for(tmp_path, spec_dir, ["tiny-bert"], ["desktop-cpu", "embedded-board"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt.cli", "sweep", str(spec), "--out", str(out), "--ray",
                             ray_cluster, "--json"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_when_building(proc, out, parent=True)  # the Ray worker process running the cell's task
    _assert_survived(out, "tiny-bert", killed, proc)
