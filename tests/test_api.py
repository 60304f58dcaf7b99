"""The public API: lazy attributes and the docstring examples (run as tests)."""

from __future__ import annotations

import doctest

import edgeopt
from edgeopt import api


def test_docstring_examples_run():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


def test_lazy_public_api():
    assert edgeopt.load_profile is api.load_profile
    assert set(edgeopt.__all__) >= {"load_profile", "inspect", "make_plan", "package", "bench"}


def test_plan_for_every_builtin_profile(tiny_bert_dir):
    from edgeopt.profiles import builtin_profile_names

    for name in builtin_profile_names():
        plan = api.make_plan(str(tiny_bert_dir), profile=name)
        assert plan.profile_name == name
        assert plan.rows and all(r.estimate for r in plan.rows)
        assert plan.feasible, f"{name}: {plan.why_nothing_fits()}"
