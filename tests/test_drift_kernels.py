"""Drift kernels without Spark, against scipy/numpy: KS and quantiles by bucket refinement, its p-value, PSI, chi-square."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from scipy import stats

from pipelines.drift import kernels as K

PROBS = [k / 10 for k in range(1, 10)]


def _scan(parts, buckets):
    """Each part is one task (one file); each task sees its values in three batches."""
    out = []
    for p in parts:
        s = K.BucketScan(buckets)
        for chunk in np.array_split(p, 3):
            s.update(chunk)
        out.append(s.result())
    return [reduce(K.merge_bucket_results, out)]  # folded as the driver folds the files' results


def _refine(x0, x1, *, tasks=3, rng=None, probs=PROBS):
    """The refinement as the stage runs it, without Spark: returns the Refiner and the passes it took."""
    rng = rng or np.random.default_rng(0)

    def split(x):
        return np.split(K.finite_values(x), np.sort(rng.integers(0, x.size + 1, tasks - 1)))

    p0, p1 = split(np.asarray(x0, float)), split(np.asarray(x1, float))
    top = K.Buckets.top()
    h0 = sum(r["counts"] for r in _scan(p0, top))
    h1 = sum(r["counts"] for r in _scan(p1, top))
    ref = K.Refiner(sum(map(len, p0)), sum(map(len, p1)), probs, h0, h1)
    passes = 1
    while (b := ref.plan()) is not None:
        ref.apply(_scan(p0, b), _scan(p1, b))
        passes += 1
        assert passes < 40
    return ref, passes


def _check(ref, x0, x1):
    f0, f1 = K.finite_values(x0), K.finite_values(x1)
    scipy_d = stats.ks_2samp(f0, f1, method="asymp")
    d = ref.statistic()
    assert abs(d - scipy_d.statistic) < 1e-12
    assert abs(K.ks_pvalue(d, f0.size, f1.size) - scipy_d.pvalue) < 1e-12
    q = np.quantile(f0, PROBS, method="inverted_cdf")
    assert ref.quantiles() == q.tolist()
    inner = np.unique(np.r_[f0.min(), q, f0.max()])[1:-1]
    b0, b1 = ref.bin_counts(inner)
    assert b0.tolist() == np.bincount(K.bin_index(f0, inner), minlength=inner.size + 1).tolist()
    assert b1.tolist() == np.bincount(K.bin_index(f1, inner), minlength=inner.size + 1).tolist()


def _samples(kind, rng, n0, n1):
    if kind == "continuous":
        return rng.normal(0, 1, n0), rng.normal(0.1, 1.2, n1)
    if kind == "shifted":
        return rng.normal(0, 3, n0), rng.normal(0.5, 3, n1)
    if kind == "rounded":
        return rng.normal(0, 1, n0).round(1), rng.normal(0.2, 1, n1).round(1)
    if kind == "integers":
        return rng.integers(0, 4, n0).astype(float), rng.integers(0, 5, n1).astype(float)
    if kind == "wide":  # tiny, huge and negative values: leaves at every depth, most of them empty
        return (rng.choice([-1e300, -1e-300, 5e-324, 1.0, 1e300], n0) * rng.uniform(1, 1.0001, n0),
                rng.choice([-1e300, 1e-300, 1.0, 2.0], n1) * rng.uniform(1, 1.0001, n1))
    return np.full(n0, 2.0), rng.integers(0, 5, n1).astype(float)  # constant vs spread


@pytest.mark.parametrize("kind", ["continuous", "shifted", "rounded", "integers", "wide", "constant-vs-spread"])
def test_refined_ks_quantiles_and_bins_equal_scipy_and_numpy(kind, monkeypatch):
    rng = np.random.default_rng(sum(map(ord, kind)))
    for budgets in ({}, {"COLLECT_ROWS": 4, "PROBE_DISTINCT": 1, "MAX_SPLIT": 2, "MAX_COLLECT_ROWS": 16}):
        with monkeypatch.context() as m:  # tiny budgets: deep splits, probes that overflow, deferred leaves
            for k, v in budgets.items():
                m.setattr(K, k, v)
            for _ in range(15):
                n0, n1 = rng.integers(1, 1500, 2)
                x0, x1 = _samples(kind, rng, n0, n1)
                ref, _ = _refine(x0, x1, rng=rng)
                _check(ref, x0, x1)


def test_special_values_negative_zero_and_empty_samples():
    x0 = np.array([np.nan, -0.0, 0.0, 1.0, np.inf, -np.inf, -0.0])
    x1 = np.array([0.0, 0.0, 2.0, np.nan])
    ref, _ = _refine(x0, x1)
    _check(ref, x0, x1)  # -0.0 and 0.0 are one value
    ref, _ = _refine(np.array([np.nan]), np.array([1.0, 2.0]), probs=[])
    assert np.isnan(ref.statistic())
    ref, _ = _refine(np.array([1.0, 2.0]), np.zeros(0))
    assert np.isnan(ref.statistic())


def test_the_same_result_for_1_and_7_tasks():
    rng = np.random.default_rng(7)
    x0, x1 = rng.normal(0, 1, 20_000).round(2), rng.normal(0.05, 1, 15_000).round(2)
    one, _ = _refine(x0, x1, tasks=1, rng=rng)
    seven, _ = _refine(x0, x1, tasks=7, rng=rng)
    assert one.statistic() == seven.statistic() and one.quantiles() == seven.quantiles()
    _check(seven, x0, x1)


def test_a_large_sample_needs_few_passes_and_bounded_driver_state():
    rng = np.random.default_rng(11)
    x0, x1 = rng.normal(0, 1, 400_000), rng.normal(0, 1, 400_000)  # no drift: the hardest case to prune
    ref, passes = _refine(x0, x1, tasks=2, rng=rng)
    assert passes <= 3
    assert abs(ref.statistic() - stats.ks_2samp(x0, x1).statistic) < 1e-12
    assert sum(k.size for k, _, _ in ref.collected.values()) < K.MAX_COLLECT_ROWS * passes


def test_ordered_keys_keep_the_order_of_doubles():
    x = np.array([-np.finfo(float).max, -1e10, -1.0, -5e-324, 0.0, 5e-324, 1.0, 2.0, np.finfo(float).max])
    k = K.ordered_keys(x)
    assert (np.diff(k.astype(object)) > 0).all()
    assert K.key_values(k).tolist() == x.tolist()


def test_task_profiles_merge_to_numpy_moments():
    rng = np.random.default_rng(2)
    x = rng.normal(1e6, 0.01, 10_000)  # a large mean: naive sums of squares would lose the std
    import polars as pl

    parts = []
    for chunk in np.array_split(x, 5):
        t = K.TaskScan(["v"], [K.Buckets.top()], profile=True)
        for b in np.array_split(chunk, 3):
            t.update(pl.DataFrame({"v": np.r_[b, np.nan]}))
        parts.append(t.result())
    rows, st = K.merge_profiles(parts)
    assert rows == x.size + 15 and st[0][1] == 15 and st[0][3] == x.size
    assert st[0][4] == pytest.approx(x.mean(), rel=1e-14)
    assert np.sqrt(st[0][5] / st[0][3]) == pytest.approx(x.std(), rel=1e-9)
    assert (st[0][6], st[0][7]) == (x.min(), x.max())


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
