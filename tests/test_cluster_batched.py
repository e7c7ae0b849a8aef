"""The batched kmeans sweep over Spark: exactness against scikit-learn and ClusteringEvaluator,
partition independence, ID-like columns."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets, metrics

from pipelines.cluster import lloyd
from pipelines.cluster.batched import (
    assignments,
    fit_all,
    local_runner,
    runner,
    stats_of,
    write_assignment_rows,
)
from pipelines.cluster.data import ROW_ID, feature_columns, select_features
from pipelines.cluster.scores import calinski_harabasz_from_stats, davies_bouldin_from_stats
from pipelines.config import ClusterEvalSettings
from pipelines.runs import Run

KS = [2, 3, 4, 5]


def frame(spark, x, partitions):
    names = feature_columns(x.shape[1])
    rows = [(i, *map(float, v)) for i, v in enumerate(x)]
    schema = f"{ROW_ID} long, " + ", ".join(f"{n} double" for n in names)
    return spark.createDataFrame(rows, schema).repartition(partitions).cache()


@pytest.fixture(scope="module")
def wine():
    x = datasets.load_wine().data
    return (x - x.mean(axis=0)) / x.std(axis=0)


def sweep(spark, x, partitions, *, summary_rows=50_000, local=False):
    """The batched sweep's steps on ``x``; ``local=False`` forces Spark passes even when the
    summary holds every row (the job would run those on the driver)."""
    settings = ClusterEvalSettings(summary_rows=summary_rows, n_init=3)
    run = Run(job="test", output="unused")
    df = frame(spark, x, partitions)
    fitted = fit_all(df, KS, settings, run, rows=x.shape[0], key=[ROW_ID], local=local)
    assert fitted.local is local
    order = sorted(fitted.fits)
    summary = np.asarray(x, dtype=np.float64)  # local: every row is in the summary (any order)
    run_pass = local_runner(summary) if local else runner(df)
    evals = lloyd.evaluate(run_pass, [fitted.fits[k] for k in order], pivot=fitted.pivot)
    labels = {r[ROW_ID] * 100 + r["k"]: r["cluster"]
              for r in assignments(df, {k: fitted.fits[k].centres for k in order}, pivot=fitted.pivot).collect()}
    df.unpersist()
    return fitted, dict(zip(order, evals, strict=True)), {
        k: np.array([labels[i * 100 + k] for i in range(x.shape[0])]) for k in order
    }


@pytest.fixture(scope="module")
def one_and_seven(spark, wine):
    return sweep(spark, wine, 1), sweep(spark, wine, 7)


def test_metrics_equal_sklearn_and_spark_on_the_job_labels(spark, wine, one_and_seven):
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.linalg import Vectors

    _, evals, labels = one_and_seven[1]
    evaluator = ClusteringEvaluator(metricName="silhouette", distanceMeasure="squaredEuclidean")
    for k, ev in evals.items():
        lab = labels[k]
        assert calinski_harabasz_from_stats(stats_of(ev)) == pytest.approx(metrics.calinski_harabasz_score(wine, lab),
                                                                           rel=1e-9)
        assert davies_bouldin_from_stats(stats_of(ev)) == pytest.approx(metrics.davies_bouldin_score(wine, lab),
                                                                        rel=1e-9)
        pred = spark.createDataFrame([(Vectors.dense(v), int(c)) for v, c in zip(wine, lab, strict=True)],
                                     ["features", "prediction"])
        assert ev.silhouette_spark == pytest.approx(evaluator.evaluate(pred), rel=1e-9)


def _assert_same_sweep(a, b):
    """Two sweeps of the same rows: the same labels, passes, counts, centroids and metrics."""
    (fa, ea, la), (fb, eb, lb) = a, b
    for k in KS:
        np.testing.assert_array_equal(la[k], lb[k])
        assert fa.fits[k].n_iter == fb.fits[k].n_iter and fa.fits[k].converged == fb.fits[k].converged
        np.testing.assert_array_equal(ea[k].counts, eb[k].counts)
        np.testing.assert_allclose(ea[k].centroids, eb[k].centroids, rtol=1e-12, atol=1e-12)
        assert stats_of(ea[k]).inertia == pytest.approx(stats_of(eb[k]).inertia, rel=1e-12)
        assert ea[k].silhouette_spark == pytest.approx(eb[k].silhouette_spark, rel=1e-12)


def test_one_and_seven_partitions_give_the_same_result(one_and_seven):
    _assert_same_sweep(*one_and_seven)


def test_driver_passes_on_a_whole_summary_equal_the_spark_passes(spark, wine, one_and_seven):
    """Below summary_rows the job runs its passes on the driver: the same fits, labels and metrics."""
    driver = sweep(spark, wine, 3, local=True)
    _assert_same_sweep(driver, one_and_seven[1])
    _, evals, labels = driver
    for k in KS:
        assert davies_bouldin_from_stats(stats_of(evals[k])) == pytest.approx(
            metrics.davies_bouldin_score(wine, labels[k]), rel=1e-9)


def test_driver_written_assignments_equal_spark_labelling_the_frame(spark, wine, tmp_path):
    """Below summary_rows the job labels and writes ``assignments`` on the driver (no Spark
    job): the same rows as Spark labelling the prepared frame."""
    import polars as pl

    df = frame(spark, wine, 3)
    run = Run(job="test", output="unused")
    fitted = fit_all(df, KS, ClusterEvalSettings(n_init=3), run, rows=wine.shape[0], key=[ROW_ID], local=True)
    centres = {k: fitted.fits[k].centres for k in KS}
    path = str(tmp_path / "assignments")
    write_assignment_rows(np.arange(wine.shape[0]), np.asarray(wine, dtype=np.float64), centres, pivot=fitted.pivot,
                          path=path)
    got = pl.read_delta(path).select(ROW_ID, "k", "cluster").sort("k", ROW_ID)
    want = pl.from_arrow(assignments(df, centres, pivot=fitted.pivot).toArrow()).sort("k", ROW_ID)
    df.unpersist()
    assert got.height == wine.shape[0] * len(KS)
    assert got.equals(want)


def test_a_sampled_summary_does_not_depend_on_partitioning(spark):
    x, _ = datasets.make_blobs(n_samples=3000, centers=4, n_features=3, random_state=4)
    a, _, la = sweep(spark, x, 1, summary_rows=500)
    b, _, lb = sweep(spark, x, 7, summary_rows=500)
    assert a.summary_rows == b.summary_rows <= 500
    np.testing.assert_array_equal(a.pivot, b.pivot)
    for k in KS:
        np.testing.assert_array_equal(la[k], lb[k])


def test_id_like_columns_are_left_out_by_default(spark):
    from pyspark.sql import functions as F

    df = spark.createDataFrame(
        [(i, 1000 + i, i % 3, float(i) * 0.5, float(i % 7)) for i in range(200)],
        "id long, customer_id long, segment int, amount double, score double",
    ).withColumn("serial", F.col("customer_id") * 3)
    run = Run(job="test", output="unused")
    assert select_features(df, None, source="t", run=run) == ["segment", "amount", "score"]
    assert "id: named like an id" in run.warnings[0] and "serial: integer, unique per row" in run.warnings[0]
    assert select_features(df, ["customer_id", "amount"], source="t", run=run) == ["customer_id", "amount"]


def test_profile_equals_numpy_and_is_bit_identical_across_runs(spark):
    """Mean / population std / min / max over the fully valid rows, and the imputation
    means, equal numpy's on rows with nulls, NaN and inf spread over 5 partitions; two
    runs give bit-identical statistics, 1 partition against 5 agree to 1e-10."""
    from pipelines.cluster.data import _impute_means, profile

    rng = np.random.default_rng(3)
    x = rng.normal(1e6, 3.0, size=(4000, 3))
    x[::97, 0] = np.nan
    x[5::131, 1] = np.inf
    rows = [(i, *[None if (j == 2 and i % 89 == 0) else float(v) for j, v in enumerate(r)]) for i, r in enumerate(x)]
    x[::89, 2] = np.nan
    df = spark.createDataFrame(rows, f"{ROW_ID} long, a double, b double, c double")
    five, one = df.repartition(5, ROW_ID).cache(), df.coalesce(1).cache()
    ok = np.isfinite(x).all(axis=1)
    p, again, single = profile(five, ["a", "b", "c"]), profile(five, ["a", "b", "c"]), profile(one, ["a", "b", "c"])
    assert (p.rows, p.invalid_rows) == (4000, int((~ok).sum()))
    assert p.bad_values == {c: int((~np.isfinite(x[:, j])).sum()) for j, c in enumerate("abc")}
    np.testing.assert_allclose(p.mean, x[ok].mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(p.std, x[ok].std(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(p.minimum, x[ok].min(axis=0))
    np.testing.assert_array_equal(p.maximum, x[ok].max(axis=0))
    assert p.mean.tobytes() == again.mean.tobytes() and p.std.tobytes() == again.std.tobytes()
    np.testing.assert_allclose(single.std, p.std, rtol=1e-10)
    filled, _, _ = _impute_means(five, ["a", "b", "c"], {"a": 1, "b": 1, "c": 1})
    got = {r[ROW_ID]: r for r in filled.filter(f"{ROW_ID} IN (0, 5)").collect()}
    finite = [x[:, j][np.isfinite(x[:, j])].mean() for j in range(3)]
    assert got[0]["a"] == pytest.approx(finite[0], rel=1e-13) and got[0]["c"] == pytest.approx(finite[2], rel=1e-13)
    assert got[5]["b"] == pytest.approx(finite[1], rel=1e-13)
    five.unpersist()
    one.unpersist()
