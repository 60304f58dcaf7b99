"""The architecture zoo: every common architecture packaged in every format at fp32 and int8.

    python benchmarks/zoo.py                       # the whole table (about 20-30 min on 2 cores)
    python benchmarks/zoo.py --arch bert gpt2      # some rows
    python benchmarks/zoo.py --json zoo.json       # also write every cell as JSON

Each model is a tiny random-initialised one built from transformers' own config class with a fixed seed
(``tests/zoo/zoo_models.py``), saved as a Hugging Face directory and handed to ``edgeopt.package`` with
``fmt`` and ``precision`` fixed. A cell is ``ok`` (verified in its runtime: the mean cosine, or the
perplexity ratio for decoder LMs), ``refused`` (exit 4 before any export work, with the reason),
``failed`` (another documented exit code) or ``BUG`` (exit 1). One subprocess per architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "zoo"))

import zoo_models  # noqa: E402


def run_arch(name: str, work: Path) -> list[dict]:
    """All cells of one architecture, in a subprocess of its own (a crash there is a row, not the end)."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import zoo_models as z; "
            "name, work = sys.argv[2], Path(sys.argv[3]); d = z.make(name, work / name); "
            "print('ZOO' + json.dumps([z.run_cell(d, f, p, work / 'dist') for f in z.FORMATS for p in z.PRECISIONS]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "tests" / "zoo"), name, str(work)],
                          capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("ZOO")), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return [{"format": f, "precision": p, "status": "error", "exit_code": proc.returncode,
                 "message": " | ".join(tail)} for f in zoo_models.FORMATS for p in zoo_models.PRECISIONS]
    return json.loads(line[3:])


def cell_text(cell: dict) -> str:
    status = cell["status"]
    if status == "verified":
        fid = cell["fidelity"]
        if fid.get("perplexity_ratio") is not None:
            return f"ok ppl x{fid['perplexity_ratio']:.3f}"
        return f"ok cos {fid['mean_cosine']:.4f}"
    return {"refused": "refused", "failed": f"failed ({cell['exit_code']})"}.get(status, f"BUG ({cell['exit_code']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="*", default=list(zoo_models.CASES))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeopt-zoo-") as tmp:
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = dict(zip(args.arch, pool.map(lambda a: run_arch(a, Path(tmp) / a), args.arch)))
    cols = [f"{f} {p}" for f in zoo_models.FORMATS for p in zoo_models.PRECISIONS]
    print(f"{'architecture':<12} " + " ".join(f"{c:<16}" for c in cols))
    for name, cells in rows.items():
        print(f"{name:<12} " + " ".join(f"{cell_text(c):<16}" for c in cells))
    print()
    for f in zoo_models.FORMATS:
        n = sum(1 for cells in rows.values() if any(c["format"] == f and c["precision"] == "int8"
                                                    and c["status"] == "verified" for c in cells))
        print(f"{f} int8 verified: {n} of {len(rows)}")
    notes = [(n, c) for n, cells in rows.items() for c in cells if c["status"] != "verified"]
    if notes:
        print("\nwhy each cell that is not ok:")
        for name, c in notes:
            print(f"  {name} {c['format']} {c['precision']}: {c['message'].splitlines()[0][:300]}")
            if c["status"] in ("failed", "error") and len(c["message"].splitlines()) > 1:
                for extra in c["message"].splitlines()[1:4]:
                    print(f"      {extra[:300]}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
