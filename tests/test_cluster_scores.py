"""The pure-numpy CH/DB kernels and the k selection, against scikit-learn (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets, metrics
from sklearn.cluster import KMeans

from pipelines.cluster.scores import (
    batch_means,
    calinski_harabasz_from_stats,
    davies_bouldin_from_stats,
    merge_means,
    stats_from_arrays,
)
from pipelines.cluster.select import choose, elbow_choice, gap_choice

RTOL = 1e-9


@pytest.fixture(scope="module", params=["iris", "wine", "digits", "breast_cancer"])
def dataset(request):
    x = getattr(datasets, f"load_{request.param}")().data.astype(np.float64)
    kmeans = KMeans(n_clusters=5, n_init=2, random_state=0).fit_predict(x)
    random = np.random.default_rng(1).integers(0, 6, x.shape[0]) * 10 - 7  # labels not 0..k-1
    return x, {"kmeans": kmeans, "random": random}


@pytest.mark.parametrize("labelling", ["kmeans", "random"])
def test_scores_equal_sklearn(dataset, labelling):
    x, labels = dataset
    y = labels[labelling]
    stats = stats_from_arrays(x, y)
    assert calinski_harabasz_from_stats(stats) == pytest.approx(metrics.calinski_harabasz_score(x, y), rel=RTOL)
    assert davies_bouldin_from_stats(stats) == pytest.approx(metrics.davies_bouldin_score(x, y), rel=RTOL)


def test_shifted_far_from_origin_matches_unshifted_sklearn():
    x, y = datasets.make_blobs(n_samples=3000, centers=5, n_features=4, cluster_std=1.5, random_state=3)
    stats = stats_from_arrays(x + 1e6, y)
    assert calinski_harabasz_from_stats(stats) == pytest.approx(metrics.calinski_harabasz_score(x, y), rel=RTOL)
    assert davies_bouldin_from_stats(stats) == pytest.approx(metrics.davies_bouldin_score(x, y), rel=RTOL)


def test_batched_means_merge_to_the_exact_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(1e6, 1.0, size=(1000, 3))
    y = rng.integers(0, 3, 1000)
    parts = [batch_means(x[i : i + 97], y[i : i + 97]) for i in range(0, 1000, 97)]
    acc = {}
    for uniq, n, m in parts:
        for label, n_i, m_i in zip(uniq, n, m, strict=True):
            acc[label] = merge_means(*acc[label], n_i, m_i) if label in acc else (n_i, m_i)
    for label in range(3):
        exact = np.mean(x[y == label] - 1e6, axis=0) + 1e6
        assert acc[label][0] == (y == label).sum()
        np.testing.assert_allclose(acc[label][1], exact, rtol=0, atol=1e-9)


def test_single_label_raises_sklearns_error():
    x = np.arange(10.0).reshape(5, 2)
    with pytest.raises(ValueError, match="Number of labels is 1. Valid values are 2 to n_samples - 1"):
        metrics.calinski_harabasz_score(x, np.zeros(5))  # the reference raises too
    with pytest.raises(ValueError, match="Number of labels is 1. Valid values are 2 to n_samples - 1"):
        calinski_harabasz_from_stats(stats_from_arrays(x, np.zeros(5, dtype=int)))
    with pytest.raises(ValueError, match="Number of labels is 5"):
        davies_bouldin_from_stats(stats_from_arrays(x, np.arange(5)))


def test_zero_dispersion_and_coincident_centroids_follow_sklearn():
    # every point on its centroid: CH = 1.0, DB = 0.0 in scikit-learn
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0], [9.0, 1.0]])
    y = np.array([0, 0, 1, 1, 2])
    s = stats_from_arrays(x, y)
    assert calinski_harabasz_from_stats(s) == metrics.calinski_harabasz_score(x, y) == 1.0
    assert davies_bouldin_from_stats(s) == metrics.davies_bouldin_score(x, y) == 0.0
    # two clusters with the same centroid (0, 0) and a third one elsewhere
    x = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [6.0, 6.0], [8.0, 6.0]])
    y = np.array([3, 3, 5, 5, 9, 9])
    s = stats_from_arrays(x, y)
    assert calinski_harabasz_from_stats(s) == pytest.approx(metrics.calinski_harabasz_score(x, y), rel=RTOL)
    assert davies_bouldin_from_stats(s) == pytest.approx(metrics.davies_bouldin_score(x, y), rel=RTOL)
    # all centroids coincide: DB = 0.0
    x = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    assert davies_bouldin_from_stats(stats_from_arrays(x, y)) == metrics.davies_bouldin_score(x, y) == 0.0


def _rows(ks, **series):
    return [{"k": k, **{m: v[i] for m, v in series.items()}} for i, k in enumerate(ks)]


def test_choose_agreement_and_disagreement():
    ks = [2, 3, 4, 5, 6]
    agree = _rows(ks, calinski_harabasz=[10, 20, 90, 40, 30], davies_bouldin=[0.9, 0.7, 0.2, 0.8, 1.0],
                  silhouette_sample=[0.5, 0.6, 0.9, 0.6, 0.5], silhouette_spark=[0.5, 0.6, 0.9, 0.6, 0.5],
                  inertia=[1000, 600, 100, 90, 85])
    c = choose(agree)
    assert c["recommended_k"] == 4
    assert c["best_k"]["elbow"] == 4 and c["best_k"]["gap"] is None and c["best_k"]["bic"] is None
    assert c["explanation"].startswith("All 4 voting methods agree on k=4")

    split = _rows(ks, calinski_harabasz=[10, 95, 90, 40, 30], davies_bouldin=[0.9, 0.7, 0.2, 0.8, 1.0],
                  silhouette_sample=[0.5, 0.95, 0.9, 0.6, 0.5], silhouette_spark=[0.5, 0.6, 0.9, 0.6, 0.5],
                  inertia=[1000, 600, 100, 90, 85])
    c = choose(split)
    # k=3 gets CH + silhouette, k=4 gets DB + elbow: a 2-2 tie
    assert c["votes"] == {"3": ["calinski_harabasz", "silhouette_sample"], "4": ["davies_bouldin", "elbow"]}
    # mean rank over CH, DB, silhouette: k=3 is (1 + 2 + 1) / 3, k=4 is (2 + 1 + 2) / 3
    assert c["recommended_k"] == 3
    assert "k=3: 1.33, k=4: 1.67" in c["explanation"]
    assert "squared-Euclidean silhouette picks k=4" in c["explanation"]


def test_gap_rule_and_elbow_edge_cases():
    rows = _rows([2, 3, 4, 5], gap=[0.2, 0.5, 0.9, 0.92], gap_sk=[0.05, 0.05, 0.05, 0.05])
    assert gap_choice(rows) == (4, "")  # 0.9 >= 0.92 - 0.05
    k, note = gap_choice(_rows([2, 3], gap=[0.1, 0.5], gap_sk=[0.01, 0.01]))
    assert k == 3 and "lower bound" in note
    assert elbow_choice(_rows([2, 3], inertia=[10.0, 5.0])) is None
