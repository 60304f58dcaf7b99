"""The Python API's docstring examples run, in the order a user would, and every command mirrors its function.

The examples share one scratch folder: ``package`` writes ``dist/...``, ``bench`` measures it, ``report`` reads
both, as a person would type them. They use the real all-MiniLM-L6-v2 and onnxruntime (about a minute here).
"""

from __future__ import annotations

import doctest
import inspect

import pytest

import edgeopt
from edgeopt import api, cli

# The order the examples build on each other (``package`` before ``bench`` before ``report``).
ORDER = ("load_profile", "inspect", "make_plan", "package", "bench", "report")

# CLI parameter → API parameter, where the names differ (the flag reads better on a command line).
RENAMED = {"profile_name": "profile", "python_path": "python", "identity": "identity_file", "no_save": "save",
           "html_out": "html", "base": "profile"}

MIRRORS = [
    (("profiles", "show"), api.load_profile, {"name": "name_or_path"}),
    (("inspect",), api.inspect, {}),
    (("plan",), api.make_plan, {}),
    (("package",), api.package, {}),
    (("bench",), api.bench, {}),
    (("report",), api.report, {}),
    (("profiles", "calibrate"), api.calibrate_profile, {}),
]


def _doctests(obj, name):
    tests = doctest.DocTestFinder(exclude_empty=True).find(obj, name, globs={})
    return [t for t in tests if t.examples and t.name == name]


def test_every_public_function_has_an_example():
    for name in (*ORDER, "__module__"):
        obj = api if name == "__module__" else getattr(api, name)
        assert _doctests(obj, name), f"edgeopt.api.{name} has no runnable example in its docstring"
    for name in ORDER:
        assert getattr(edgeopt, name) is getattr(api, name), f"edgeopt.{name} is not the public API's"
        doc = inspect.getdoc(getattr(api, name))
        for section in ("Args:", "Returns:", "Raises:"):
            assert section in doc, f"edgeopt.{name}'s docstring has no {section} section"


@pytest.mark.slow
def test_docstring_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for name in ("__module__", *ORDER):
        obj = api if name == "__module__" else getattr(api, name)
        for test in _doctests(obj, name):
            runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted >= 25, results
    assert results.failed == 0, "".join(report)
    # What the examples left behind is what they said: a bundle, its bench record, and the HTML page.
    bundle = tmp_path / "dist" / "all-MiniLM-L6-v2-arm-mobile"
    assert (bundle / "manifest.json").is_file() and len(list((bundle / "results").glob("*.json"))) == 1
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("<img") >= 2


@pytest.mark.parametrize("path,fn,extra", MIRRORS, ids=[" ".join(m[0]) for m in MIRRORS])
def test_every_command_option_is_an_api_argument(path, fn, extra):
    """The CLI is a thin skin: each option of the command is a parameter of the function it calls."""
    cmd = cli.cli
    for part in path:
        cmd = cmd.commands[part]
    api_params = set(inspect.signature(fn).parameters)
    for param in cmd.params:
        if param.name == "json_out":  # output format of the command, not an input of the function
            continue
        mapped = extra.get(param.name) or RENAMED.get(param.name, param.name)
        assert mapped in api_params, (f"`edgeopt {' '.join(path)}` option {param.name!r} has no counterpart in "
                                      f"edgeopt.{fn.__name__}{inspect.signature(fn)}")
