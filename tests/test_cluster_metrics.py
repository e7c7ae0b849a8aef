"""pipelines.cluster.metrics on Spark DataFrames, against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets, metrics
from sklearn.cluster import KMeans

from pipelines.cluster.metrics import calinski_harabasz_score, cluster_stats, davies_bouldin_score

RTOL = 1e-9


def frame(spark, x, y, *, vector=False, partitions=None):
    df = spark.createDataFrame(
        [(v.tolist(), int(lab)) for v, lab in zip(x, y, strict=True)], "features array<double>, prediction int"
    )
    if partitions:
        df = df.repartition(partitions)
    if vector:
        from pyspark.ml.functions import array_to_vector

        df = df.select(array_to_vector("features").alias("features"), "prediction")
    return df.cache()


def assert_both_equal_sklearn(df, x, y, *, reference_x=None):
    ref = x if reference_x is None else reference_x
    assert calinski_harabasz_score(df) == pytest.approx(metrics.calinski_harabasz_score(ref, y), rel=RTOL)
    assert davies_bouldin_score(df) == pytest.approx(metrics.davies_bouldin_score(ref, y), rel=RTOL)


@pytest.mark.parametrize("name", ["iris", "wine", "digits", "breast_cancer"])
def test_bundled_datasets_kmeans_and_random_labels(spark, name):
    x = getattr(datasets, f"load_{name}")().data.astype(np.float64)
    km = KMeans(n_clusters=4, n_init=2, random_state=0).fit_predict(x)
    rand = np.random.default_rng(7).integers(0, 5, x.shape[0]) * 3 + 11  # labels 11, 14, ... not 0..k-1
    assert_both_equal_sklearn(frame(spark, x, km, vector=True), x, km)
    assert_both_equal_sklearn(frame(spark, x, rand), x, rand)


def test_shifted_by_1e6_matches_sklearn_on_unshifted(spark):
    x, y = datasets.make_blobs(n_samples=2000, centers=4, n_features=3, cluster_std=2.0, random_state=5)
    assert_both_equal_sklearn(frame(spark, x + 1e6, y), x + 1e6, y, reference_x=x)
    # scikit-learn itself misses 1e-9 there (expanded-form distances), hence the unshifted reference
    shifted, unshifted = metrics.davies_bouldin_score(x + 1e6, y), metrics.davies_bouldin_score(x, y)
    assert abs(shifted / unshifted - 1) > 1e-8


def test_result_does_not_depend_on_partitioning(spark):
    x, y = datasets.make_blobs(n_samples=600, centers=3, n_features=2, random_state=2)
    a = cluster_stats(frame(spark, x, y, partitions=1))
    b = cluster_stats(frame(spark, x, y, partitions=5))
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-13)
    np.testing.assert_allclose(a.sse, b.sse, rtol=1e-12)


def test_edge_cases_match_sklearn(spark):
    # single label: scikit-learn's ValueError condition and message
    x = np.arange(12.0).reshape(6, 2)
    with pytest.raises(ValueError, match=r"Number of labels is 1\. Valid values are 2 to n_samples - 1"):
        calinski_harabasz_score(frame(spark, x, np.full(6, 4)))
    with pytest.raises(ValueError, match=r"Number of labels is 6\."):
        davies_bouldin_score(frame(spark, x, np.arange(6)))
    # zero within-cluster dispersion
    x = np.array([[1.0, 1.0], [1.0, 1.0], [4.0, 0.0], [4.0, 0.0], [4.0, 0.0]])
    y = np.array([-2, -2, 7, 7, 7])
    df = frame(spark, x, y)
    assert calinski_harabasz_score(df) == metrics.calinski_harabasz_score(x, y) == 1.0
    assert davies_bouldin_score(df) == metrics.davies_bouldin_score(x, y) == 0.0
    # coincident centroids (two clusters centred on the origin)
    x = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -2.0], [0.0, 2.0], [7.0, 7.0], [9.0, 7.0], [8.0, 8.0]])
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    assert_both_equal_sklearn(frame(spark, x, y), x, y)


def test_bad_inputs_raise(spark):
    df = spark.createDataFrame([([1.0, float("nan")], 0), ([2.0, 1.0], 1), ([3.0, 1.0], 1)], "features array<double>, prediction int")
    with pytest.raises(ValueError, match="1 rows have a null label or a null, NaN or infinite value"):
        calinski_harabasz_score(df)
    df = spark.createDataFrame([([1.0], 0.5)], "features array<double>, prediction double")
    with pytest.raises(TypeError, match="prediction_col 'prediction' must be an integer column"):
        davies_bouldin_score(df)
    with pytest.raises(ValueError, match="features_col 'f' is not a column"):
        calinski_harabasz_score(df, features_col="f")


@pytest.mark.parametrize(("k", "dims"), [(3, 2), (5, 4), (7, 8)])
def test_k_recovery_on_blobs(spark, k, dims):
    from pyspark.ml.clustering import KMeans as SparkKMeans

    from pipelines.cluster.data import make_blobs

    cols = [f"x{j}" for j in range(dims)]
    from pyspark.sql import functions as F

    df = make_blobs(spark, rows=900, k=k, dims=dims, seed=100 + k, partitions=2).select(
        F.array(*cols).alias("arr")
    )
    from pyspark.ml.functions import array_to_vector

    df = df.select(array_to_vector("arr").alias("features")).cache()
    ch, db = {}, {}
    for kk in range(k - 1, k + 2):
        pred = SparkKMeans(k=kk, seed=1, maxIter=30).fit(df).transform(df).cache()
        ch[kk], db[kk] = calinski_harabasz_score(pred), davies_bouldin_score(pred)
    df.unpersist()
    assert max(ch, key=ch.get) == k
    assert min(db, key=db.get) == k
