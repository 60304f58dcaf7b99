"""Fidelity metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeopt.verify import SQNR_CAP_DB, compare, cosine


def test_cosine_by_hand():
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_compare_metrics_by_hand():
    ref = [[np.array([3.0, 4.0])], [np.array([1.0, 0.0])]]
    cand = [[np.array([3.0, 4.5])], [np.array([1.0, 0.0])]]
    f = compare(ref, cand, ["out"])
    c0 = cosine(ref[0][0], cand[0][0])
    assert f.mean_cosine == pytest.approx((c0 + 1.0) / 2)
    assert f.min_cosine == pytest.approx(c0)
    assert f.max_abs_err == pytest.approx(0.5)
    assert f.sqnr_db == pytest.approx(10 * math.log10((9 + 16 + 1) / 0.25))
    assert f.samples == 2 and f.finite


def test_identical_outputs_cap_sqnr_and_round_trip():
    ref = [[np.ones((2, 3))]]
    f = compare(ref, ref, ["out"])
    assert f.sqnr_db == SQNR_CAP_DB and f.max_abs_err == 0.0
    from edgeopt.verify import Fidelity

    assert Fidelity.from_dict(f.to_dict()) == f


def test_nan_outputs_are_not_finite_and_serialise_as_null():
    import json

    f = compare([[np.ones(3)]], [[np.array([1.0, np.nan, 1.0])]], ["out"])
    assert not f.finite
    assert "NaN" in f.summary()
    d = json.loads(json.dumps(f.to_dict(), allow_nan=False))
    assert d["mean_cosine"] is None


def test_top1_agreement_for_logits():
    ref = [[np.array([[0.1, 0.9], [0.8, 0.2]])]]
    cand = [[np.array([[0.2, 0.7], [0.1, 0.6]])]]
    assert compare(ref, cand, ["logits"], logits=True).top1_agreement == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compare([[np.ones(3)]], [[np.ones(4)]], ["out"])
