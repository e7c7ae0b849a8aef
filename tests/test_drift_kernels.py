"""Drift kernels without Spark, against scipy: KS from split runs, its p-value, PSI, chi-square."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipelines.drift import kernels as K


def _ks_by_parts(x0, x1, rng, *, max_batch=10, max_splits=4):
    """The KS statistic through KSPartition/ks_merge: random value splits, random batch cuts, shuffled order."""
    v = np.r_[x0, x1]
    s = np.r_[np.zeros(x0.size, bool), np.ones(x1.size, bool)]
    order = np.argsort(v, kind="stable")
    v, s = v[order], s[order]
    uniq = np.unique(v)
    cuts = np.sort(rng.choice(uniq, min(max_splits, uniq.size), replace=False))
    split = np.searchsorted(cuts, v, side="right")
    parts = []
    for p in np.unique(split):
        vv, sv = v[split == p], s[split == p]
        ks = K.KSPartition(x0.size, x1.size)
        i = 0
        while i < vv.size:  # batch boundaries fall inside runs of ties too
            j = i + int(rng.integers(1, max_batch))
            ks.update(vv[i:j], sv[i:j])
            i = j
        ks.close()
        parts.append({"first": ks.first, "c0": ks.c0, "c1": ks.c1, "max0": ks.best_max[1], "max1": ks.best_max[2],
                      "min0": ks.best_min[1], "min1": ks.best_min[2]})
    rng.shuffle(parts)
    return K.ks_merge(parts, x0.size, x1.size)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "integers", "constant-vs-spread"])
def test_ks_equals_scipy_with_ties_and_any_split(kind):
    rng = np.random.default_rng(hash(kind) % 2**32)
    for _ in range(60):
        n0, n1 = rng.integers(1, 400, 2)
        if kind == "continuous":
            x0, x1 = rng.normal(0, 1, n0), rng.normal(0.1, 1.2, n1)
        elif kind == "rounded":
            x0, x1 = rng.normal(0, 1, n0).round(1), rng.normal(0.2, 1, n1).round(1)
        elif kind == "integers":
            x0, x1 = rng.integers(0, 4, n0).astype(float), rng.integers(0, 5, n1).astype(float)
        else:
            x0, x1 = np.full(n0, 2.0), rng.integers(0, 5, n1).astype(float)
        ref = stats.ks_2samp(x0, x1, method="asymp")
        d = _ks_by_parts(x0, x1, rng)
        assert abs(d - ref.statistic) < 1e-12
        assert abs(K.ks_pvalue(d, n0, n1) - ref.pvalue) < 1e-12


def test_ks_merge_checks_the_row_counts():
    ks = K.KSPartition(3, 2)
    ks.update(np.array([1.0, 2.0]), np.array([False, True]))
    ks.close()
    part = {"first": 1.0, "c0": ks.c0, "c1": ks.c1, "max0": 1, "max1": 0, "min0": 1, "min1": 1}
    with pytest.raises(RuntimeError, match="expected 3/2"):
        K.ks_merge([part], 3, 2)
    assert np.isnan(K.ks_merge([], 0, 2))


def test_psi_is_the_common_formula_with_epsilon_on_each_share():
    ref = np.array([10, 0, 30, 60])
    cur = np.array([5, 20, 30, 45])
    r, c = ref / ref.sum() + 1e-7, cur / cur.sum() + 1e-7
    assert K.psi(ref, cur) == pytest.approx(np.sum((c - r) * np.log(c / r)), rel=1e-14)
    assert K.psi(ref, ref) == 0.0
    assert np.isnan(K.psi([0, 0], [1, 2]))
    with pytest.raises(ValueError, match="same bins"):
        K.psi([1, 2], [1, 2, 3])


def test_bins_are_open_at_both_ends():
    edges = np.array([1.0, 2.0])
    assert K.bin_index(np.array([-5.0, 0.99, 1.0, 1.5, 2.0, 99.0]), edges).tolist() == [0, 0, 1, 1, 2, 2]


def test_chi_square_equals_scipy():
    ref, cur = np.array([50, 30, 20, 1]), np.array([40, 45, 10, 9])
    expected = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    got = K.chi_square(ref, cur)
    assert got[0] == pytest.approx(expected.statistic, rel=1e-12)
    assert got[1] == pytest.approx(expected.pvalue, rel=1e-9)
    assert K.chi_square([5], [7]) == (0.0, 1.0)
