"""The public API: lazy attributes and a plan on every built-in profile. The docstring examples run in
tests/test_api_docs.py (in order, in a scratch folder: they write a bundle)."""

from __future__ import annotations

import importlib

import edgeopt
from edgeopt import api


def test_lazy_public_api():
    for name in ("load_profile", "inspect", "make_plan", "package", "bench", "report", "calibrate_profile", "sweep"):
        assert getattr(edgeopt, name) is getattr(api, name) and name in edgeopt.__all__


def test_no_submodule_shadows_a_public_function():
    """Importing edgeopt.X sets attribute X on the package: a submodule named like a public function (bench,
    report) would replace that function for everyone once anything imported it."""
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(edgeopt.__path__)}
    assert not submodules & set(edgeopt.__all__), submodules & set(edgeopt.__all__)
    for name in submodules:
        importlib.import_module(f"edgeopt.{name}")
    assert edgeopt.bench is api.bench and edgeopt.report is api.report


def test_plan_for_every_builtin_profile(tiny_bert_dir):
    from edgeopt.profiles import builtin_profile_names

    for name in builtin_profile_names():
        plan = api.make_plan(str(tiny_bert_dir), profile=name)
        assert plan.profile_name == name
        assert plan.rows
        for r in plan.rows:
            # a row is estimated, or rejected up front because the profile names no execution target its
            # runtime can run on (server-gpu: ExecuTorch and LiteRT have no CUDA backend), with that reason
            assert r.estimate or (not r.targets and r.status.value == "rejected" and r.reasons), r
        assert any(r.estimate for r in plan.rows)
        assert plan.feasible, f"{name}: {plan.why_nothing_fits()}"
