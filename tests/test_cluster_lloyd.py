"""pipelines.cluster.lloyd without Spark: batched kernels against numpy / scikit-learn references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets, metrics
from sklearn.mixture import GaussianMixture

from pipelines.cluster import lloyd
from pipelines.cluster.scores import ClusterStats, calinski_harabasz_from_stats, davies_bouldin_from_stats
from pipelines.cluster.select import choose

RTOL = 1e-9


def run_over(x: np.ndarray, batch: int = 997):
    """``run_pass`` over in-memory batches (what passes.reduce does per partition)."""

    def run_pass(kernel, length):
        acc = np.zeros(length)
        for s in range(0, len(x), batch):
            acc += kernel(x[s:s + batch])
        return acc

    return run_pass


def sweep(x, ks, *, n_init=3, tol=1e-4, max_passes=30, summary=None):
    """Summary fit + refinement + evaluation, as the job runs it (here without Spark)."""
    summary = x if summary is None else summary
    pivot = summary.mean(axis=0)
    init = lloyd.fit_summary(summary, ks, n_init=n_init, seed=42)
    fits = lloyd.refine(run_over(x), {k: c for k, c in init.items() if c is not None}, pivot=pivot, tol=tol,
                        max_passes=max_passes)
    order = sorted(fits)
    evals = lloyd.evaluate(run_over(x), [fits[k] for k in order], pivot=pivot)
    labels = lloyd.labels_for(x, pivot=pivot, bank=lloyd.Bank.stack([fits[k].centres for k in order]))
    return pivot, fits, dict(zip(order, evals, strict=True)), {k: labels[:, i] for i, k in enumerate(order)}


def stats(ev: lloyd.KEval) -> ClusterStats:
    return ClusterStats(ev.labels, ev.counts, ev.centroids, ev.sse, ev.sum_dist)


def test_refine_partial_matches_a_per_k_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * 4 + 100.0
    pivot = x[7]
    centres = [x[rng.choice(500, k, replace=False)] for k in (2, 3, 5)]
    bank = lloyd.Bank.stack([c - pivot for c in centres])
    got = lloyd.RefineLayout(bank.size, 3).split(lloyd.refine_partial(x, pivot=pivot, bank=bank))
    counts, sums, sse = [], [], []
    for c in centres:
        d2 = ((x[:, None, :] - c[None]) ** 2).sum(axis=2)
        lab = d2.argmin(axis=1)
        for j in range(len(c)):
            counts.append((lab == j).sum())
            sums.append((x[lab == j] - pivot).sum(axis=0))
            sse.append(d2[lab == j, j].sum())
    np.testing.assert_array_equal(got[0], counts)
    np.testing.assert_allclose(got[1], np.array(sums), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(got[2], sse, rtol=1e-9)


def spark_silhouette_reference(x, labels):
    """Spark's squared-Euclidean silhouette by brute force (ClusteringEvaluator's definition)."""
    d2 = ((x[:, None, :] - x[None]) ** 2).sum(axis=2)
    uniq = np.unique(labels)
    s = np.zeros(len(x))
    for i in range(len(x)):
        own = labels[i]
        n_own = (labels == own).sum()
        if n_own == 1:
            continue
        a = d2[i, labels == own].sum() / (n_own - 1)
        b = min(d2[i, labels == c].mean() for c in uniq if c != own)
        s[i] = 1 - a / b if a < b else (b / a - 1 if a > b else 0.0)
    return s.mean()


@pytest.mark.parametrize("shift", [0.0, 1e6])
def test_evaluation_equals_sklearn_on_the_final_labels(shift):
    x, _ = datasets.make_blobs(n_samples=3000, centers=4, n_features=3, cluster_std=2.0, random_state=5)
    _, fits, evals, labels = sweep(x + shift, [2, 3, 4, 6])
    for k, ev in evals.items():
        lab = labels[k]
        # against scikit-learn on the unshifted points: it loses digits at 1e6 itself
        assert calinski_harabasz_from_stats(stats(ev)) == pytest.approx(metrics.calinski_harabasz_score(x, lab), rel=RTOL)
        assert davies_bouldin_from_stats(stats(ev)) == pytest.approx(metrics.davies_bouldin_score(x, lab), rel=RTOL)
        np.testing.assert_array_equal(ev.counts, np.bincount(lab, minlength=k)[ev.labels])
        inertia = sum(((x[lab == j] - x[lab == j].mean(axis=0)) ** 2).sum() for j in ev.labels)
        assert stats(ev).inertia == pytest.approx(inertia, rel=RTOL)
        assert fits[k].inertia == pytest.approx(inertia, rel=1e-7)


def test_a_real_table_far_from_the_origin_keeps_1e_9():
    # a real table's standardised columns shifted by 1e6; k above the table's structure
    # gives nearly coincident centroids
    x = datasets.load_wine().data
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    _, _, evals, labels = sweep(x + 1e6, [2, 5, 9])
    for k, ev in evals.items():
        assert calinski_harabasz_from_stats(stats(ev)) == pytest.approx(
            metrics.calinski_harabasz_score(x, labels[k]), rel=RTOL)
        assert davies_bouldin_from_stats(stats(ev)) == pytest.approx(
            metrics.davies_bouldin_score(x, labels[k]), rel=RTOL)


def test_spark_silhouette_terms_match_the_brute_force_definition():
    x, _ = datasets.make_blobs(n_samples=400, centers=3, n_features=2, random_state=1)
    _, _, evals, labels = sweep(x, [2, 3, 5])
    for k, ev in evals.items():
        assert ev.silhouette_spark == pytest.approx(spark_silhouette_reference(x, labels[k]), rel=1e-10)


def test_gmm_log_likelihood_matches_sklearn_score():
    x = datasets.load_iris().data
    pivot = x.mean(axis=0)
    gm = GaussianMixture(n_components=3, random_state=0).fit(x)
    g = lloyd.GmmParams(np.log(gm.weights_), gm.means_ - pivot, gm.precisions_cholesky_)
    assert lloyd.log_likelihood(x - pivot, g) == pytest.approx(gm.score(x) * len(x), rel=1e-12)


def test_sample_silhouettes_equal_sklearn_for_every_labeling():
    x = datasets.load_digits().data[:800]
    rng = np.random.default_rng(2)
    labels = np.column_stack([rng.integers(0, k, len(x)) for k in (2, 3, 7)] + [np.zeros(len(x), dtype=int)])
    labels[0, 2] = 6  # keep a singleton cluster somewhere: its silhouette is 0
    got = lloyd.sample_silhouettes(x, labels, working_memory=1)
    for i in range(3):
        assert got[i] == pytest.approx(metrics.silhouette_score(x, labels[:, i]), rel=1e-12)
    assert got[3] is None


def test_partials_do_not_depend_on_batching():
    x, _ = datasets.make_blobs(n_samples=5000, centers=5, n_features=4, random_state=8)
    init = lloyd.fit_summary(x[:1000], [3, 5], n_init=2, seed=1)
    pivot = x[:1000].mean(axis=0)
    a = lloyd.refine(run_over(x, 5000), init, pivot=pivot, tol=1e-4, max_passes=10)
    b = lloyd.refine(run_over(x, 313), init, pivot=pivot, tol=1e-4, max_passes=10)
    for k in (3, 5):
        assert a[k].n_iter == b[k].n_iter
        np.testing.assert_array_equal(a[k].counts, b[k].counts)
        np.testing.assert_allclose(a[k].means, b[k].means, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("k", "dims"), [(3, 2), (5, 4), (7, 8)])
def test_k_recovery_on_blobs(k, dims):
    x, _ = datasets.make_blobs(n_samples=4000, centers=k, n_features=dims, cluster_std=1.0, center_box=(-15, 15),
                               random_state=100 + k)
    _, fits, evals, labels = sweep(x, list(range(2, 11)), summary=x[::4])
    rows = []
    for kk, ev in evals.items():
        s = stats(ev)
        rows.append({"k": kk, "inertia": s.inertia, "calinski_harabasz": calinski_harabasz_from_stats(s),
                     "davies_bouldin": davies_bouldin_from_stats(s), "silhouette_spark": ev.silhouette_spark,
                     "silhouette_sample": None, "bic": None, "gap": None})
    assert choose(rows)["recommended_k"] == k
    inertia = [r["inertia"] for r in rows]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(inertia, inertia[1:], strict=False))


def test_fewer_distinct_points_than_k_and_empty_clusters():
    x = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), 10, axis=0)
    init = lloyd.fit_summary(x, [2, 3, 4], n_init=1, seed=0)
    assert init[4] is None and init[3] is not None
    # a centre no row is nearest to stays empty: it keeps its place, the others are exact
    start = {3: np.array([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]])}
    fits = lloyd.refine(run_over(x), start, pivot=np.zeros(2), tol=0.0, max_passes=5)
    assert fits[3].counts.tolist() == [20, 10, 0] and fits[3].converged
    np.testing.assert_array_equal(fits[3].means[2], [100.0, 100.0])
    ev = lloyd.evaluate(run_over(x), [fits[3]], pivot=np.zeros(2))[0]
    assert ev.labels.tolist() == [0, 1]
    lab = np.where(x[:, 0] > 3, 1, 0)
    assert davies_bouldin_from_stats(stats(ev)) == pytest.approx(metrics.davies_bouldin_score(x, lab), rel=RTOL)
