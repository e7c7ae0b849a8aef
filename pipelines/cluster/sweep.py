"""The sweep over k: the result types, the MLlib sweep and the gap statistic.

The default ``kmeans`` sweep is :mod:`pipelines.cluster.batched` (all ks in a handful of
passes). ``spark-kmeans`` and ``bisecting`` fit Spark MLlib per k here; per k: inertia,
Calinski-Harabasz and Davies-Bouldin from one pair of passes
(:func:`pipelines.cluster.metrics.cluster_stats`); Spark's squared-Euclidean
silhouette; the exact Euclidean silhouette of a bounded driver-side sample; and,
optionally, a Gaussian mixture (log-likelihood, BIC, AIC) and the gap statistic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.cluster import lloyd
from pipelines.cluster.data import (
    FEATURES,
    ROW_ID,
    Prepared,
    distinct_points,
    feature_columns,
    hash_sample,
    hash_uniform,
)
from pipelines.cluster.metrics import cluster_stats
from pipelines.cluster.scores import ClusterStats, calinski_harabasz_from_stats, davies_bouldin_from_stats

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import ClusterEvalSettings
    from pipelines.runs import Run

# The methods whose cost the report compares, and what each one's cost grows with.
METHODS = {
    "summary_lloyd": "summary sample + k-means++ on the driver + full-data Lloyd passes (all k per pass), "
                     "O(n·Σk·d·passes)",
    "evaluation": "one pass for all k: inertia + Calinski-Harabasz + Davies-Bouldin + Spark silhouette "
                  "(+ GMM log-likelihood), O(n·Σk·d)",
    "kmeans_fit": "fit (KMeans/bisecting), O(n·k·d·iterations)",
    "ch_db_inertia": "Calinski-Harabasz + Davies-Bouldin + inertia, 2 passes, O(n·k·d)",
    "silhouette_spark": "Spark ClusteringEvaluator silhouette (squaredEuclidean), O(n·k·d)",
    "silhouette_sample": "exact Euclidean silhouette (scikit-learn's) on the sample, O(m²·d) once for all k",
    "gmm": "GaussianMixture fit + BIC/AIC (MLlib), O(n·k·d²·iterations)",
    "gap": "gap statistic, B reference fits per k",
}


@dataclass
class KResult:
    """Everything measured for one k (one row of the ``metrics`` table)."""

    k: int
    algorithm: str
    inertia: float | None = None
    calinski_harabasz: float | None = None
    davies_bouldin: float | None = None
    silhouette_spark: float | None = None
    silhouette_sample: float | None = None
    log_likelihood: float | None = None
    bic: float | None = None
    aic: float | None = None
    gap: float | None = None
    gap_sk: float | None = None
    n_iter: int | None = None
    converged: bool | None = None
    cluster_sizes: list[int] = field(default_factory=list)
    fit_seconds: float | None = None
    eval_seconds: float | None = None
    # not in the metrics table
    n_clusters: int = 0
    note: str | None = None
    centers: np.ndarray | None = None
    training_cost: float | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in METRICS_COLUMNS}


METRICS_COLUMNS = [
    "k", "algorithm", "inertia", "calinski_harabasz", "davies_bouldin", "silhouette_spark", "silhouette_sample",
    "log_likelihood", "bic", "aic", "gap", "gap_sk", "n_iter", "converged", "cluster_sizes", "fit_seconds",
    "eval_seconds",
]


def make_estimator(algorithm: str, k: int, *, seed: int, max_iter: int):
    from pyspark.ml.clustering import BisectingKMeans, KMeans

    cls = KMeans if algorithm == "spark-kmeans" else BisectingKMeans
    return cls(k=k, seed=seed, maxIter=max_iter, featuresCol=FEATURES, predictionCol="prediction")


@dataclass
class Sweep:
    """Results of the sweep: one :class:`KResult` per evaluated k, skipped ks, timings.

    ``label_sample(k)`` gives the sample's clusters at k; ``assignments(ks)`` a DataFrame
    ``_row_id, k, cluster`` of every row for those ks; ``write_assignments(ks, path)``, when
    set, writes that table itself instead of Spark writing ``assignments(ks)``: from the
    rows on the driver (``assignments_on_driver``: any table), or with the engine's tasks
    reading the input's files (a table they may write).
    """

    results: list[KResult]
    skipped: list[dict[str, Any]]
    method_seconds: dict[str, float]
    method_rows: dict[str, int]
    gap_info: dict[str, Any] | None
    sample_ids: np.ndarray
    sample_x: np.ndarray
    label_sample: Callable[[int], np.ndarray]
    assignments: Callable[[list[int]], DataFrame]
    details: dict[str, Any] = field(default_factory=dict)
    write_assignments: Callable[[list[int], str], None] | None = None
    assignments_on_driver: bool = False


def run_sweep(
    spark: SparkSession,
    prep: Prepared,
    ks: list[int],
    settings: ClusterEvalSettings,
    run: Run,
    *,
    sample_ids: np.ndarray,
    sample_x: np.ndarray,
) -> Sweep:
    """Fit and evaluate every k in ``ks`` on ``prep.df`` with Spark MLlib, one k at a time."""
    from pyspark import StorageLevel
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.sql import functions as F

    # MLlib iterates over its input: cache it (the batched kmeans path streams instead).
    prep.df.persist(StorageLevel.MEMORY_AND_DISK)

    secs = dict.fromkeys(METHODS, 0.0)
    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES, predictionCol="prediction", metricName="silhouette", distanceMeasure="squaredEuclidean"
    )
    # the exact silhouette uses the sample's first rows (all of it unless the scatter needed more)
    n_sil = min(settings.silhouette_sample, sample_x.shape[0])
    sample_df = sample_frame(spark, sample_ids[:n_sil], sample_x[:n_sil]) if n_sil else None
    results: list[KResult] = []
    skipped: list[dict[str, Any]] = []
    models: dict[int, Any] = {}
    sample_labels: dict[int, np.ndarray] = {}
    n_distinct: int | None = None
    for i, k in enumerate(ks, 1):
        run.progress(f"k={k} ({i} of {len(ks)}): fitting {settings.algorithm}")
        res = KResult(k=k, algorithm=settings.algorithm)
        t0 = time.monotonic()
        model = make_estimator(settings.algorithm, k, seed=settings.seed, max_iter=settings.max_iter).fit(prep.df)
        res.fit_seconds = round(time.monotonic() - t0, 3)
        secs["kmeans_fit"] += res.fit_seconds
        summary = model.summary
        res.n_iter = int(summary.numIter)
        # Spark stops early when every center moved less than tol; reaching maxIter means it did not.
        res.converged = res.n_iter < settings.max_iter if settings.algorithm == "spark-kmeans" else None
        res.training_cost = float(summary.trainingCost)
        res.centers = np.array([np.asarray(c, dtype=np.float64) for c in model.clusterCenters()])

        pred = model.transform(prep.df)
        t0 = time.monotonic()
        stats = cluster_stats(pred, features_col=FEATURES, prediction_col="prediction")
        res.n_clusters = stats.n_labels
        sizes = np.zeros(len(res.centers), dtype=np.int64)
        sizes[stats.labels] = stats.counts
        res.cluster_sizes = [int(s) for s in sizes]
        if stats.n_labels < k:
            if n_distinct is None or n_distinct < k:
                n_distinct = distinct_points(prep.frame, limit=max(ks))
            if n_distinct < k:
                reason = f"fewer distinct points ({n_distinct}) than k={k}"
                run.warn(f"k={k} skipped: {reason}")
                skipped.append({"k": k, "reason": reason})
                continue
            res.note = f"{settings.algorithm} returned {stats.n_labels} non-empty clusters of k={k} asked"
            run.warn(f"k={k}: {res.note}")
        if stats.n_labels < 2:
            reason = f"{settings.algorithm} put every point in one cluster"
            run.warn(f"k={k} skipped: {reason}")
            skipped.append({"k": k, "reason": reason})
            continue
        _fill_stats(res, stats)
        res.eval_seconds = round(time.monotonic() - t0, 3)
        secs["ch_db_inertia"] += res.eval_seconds

        t0 = time.monotonic()
        res.silhouette_spark = float(evaluator.evaluate(pred))
        secs["silhouette_spark"] += time.monotonic() - t0
        if sample_df is not None:
            t0 = time.monotonic()
            labels = predict_sample(model, sample_df, sample_ids[:n_sil])
            res.silhouette_sample = exact_silhouette(sample_x[:n_sil], labels)
            secs["silhouette_sample"] += time.monotonic() - t0
        if settings.gmm:
            t0 = time.monotonic()
            _fit_gmm(res, prep, settings)
            secs["gmm"] += time.monotonic() - t0
        models[k] = model
        results.append(res)
        run.progress(
            f"k={k}: CH={res.calinski_harabasz:.6g} DB={res.davies_bouldin:.6g} "
            f"silhouette(spark)={res.silhouette_spark:.4f} fit {res.fit_seconds:.1f}s eval {res.eval_seconds:.1f}s"
        )
    gap_info = None
    if settings.gap and results:
        t0 = time.monotonic()
        gap_info = gap_statistic(spark, prep, results, settings, run, costs=lambda frame, rows, ks_, key, label: [
            float(make_estimator(settings.algorithm, k, seed=settings.seed, max_iter=settings.max_iter)
                  .fit(_vectors(frame)).summary.trainingCost) for k in ks_])
        secs["gap"] = time.monotonic() - t0
    rows = {
        "kmeans_fit": prep.rows,
        "ch_db_inertia": prep.rows,
        "silhouette_spark": prep.rows,
        "silhouette_sample": n_sil,
        "gmm": prep.rows if settings.gmm else 0,
        "gap": int(gap_info["rows"]) if gap_info else 0,
    }
    def label_sample(k: int) -> np.ndarray:
        if k not in sample_labels:
            sample_labels[k] = predict_sample(models[k], sample_frame(spark, sample_ids, sample_x), sample_ids)
        return sample_labels[k]

    def assignments(keep: list[int]) -> DataFrame:
        frames = [models[k].transform(prep.df).select(
            ROW_ID, F.lit(k).cast("int").alias("k"), F.col("prediction").cast("int").alias("cluster")) for k in keep]
        out = frames[0]
        for f in frames[1:]:
            out = out.unionByName(f)
        return out

    return Sweep(
        results, skipped, {m: round(s, 3) for m, s in secs.items()}, rows, gap_info,
        sample_ids, sample_x, label_sample, assignments,
    )


def _fill_stats(res: KResult, stats: ClusterStats) -> None:
    res.inertia = stats.inertia
    res.calinski_harabasz = calinski_harabasz_from_stats(stats)
    res.davies_bouldin = davies_bouldin_from_stats(stats)


def _vectors(frame: DataFrame) -> DataFrame:
    """A prepared frame's feature columns as MLlib's ``features`` vector."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    return frame.select(array_to_vector(F.array(*[c for c in frame.columns if c != ROW_ID])).alias(FEATURES))


def sample_frame(spark: SparkSession, ids: np.ndarray, x: np.ndarray) -> DataFrame:
    """The driver-side sample as a small DataFrame (``_row_id``, ``features``) to predict on."""
    from pyspark.ml.functions import array_to_vector

    rows = [(int(i), v.tolist()) for i, v in zip(ids, x, strict=True)]
    return spark.createDataFrame(rows, f"{ROW_ID} long, x array<double>").select(
        ROW_ID, array_to_vector("x").alias(FEATURES)
    )


def predict_sample(model, sample_df: DataFrame, sample_ids: np.ndarray) -> np.ndarray:
    """The model's cluster of each sample row, in ``sample_ids`` order."""
    rows = model.transform(sample_df).select(ROW_ID, "prediction").collect()
    by_id = {r[ROW_ID]: r["prediction"] for r in rows}
    return np.array([by_id[int(i)] for i in sample_ids], dtype=np.int64)


def exact_silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    """scikit-learn's Euclidean silhouette, or None where it is undefined (< 2 or = n labels)."""
    return lloyd.sample_silhouettes(x, labels[:, None])[0]


def _fit_gmm(res: KResult, prep: Prepared, settings: ClusterEvalSettings) -> None:
    from pyspark.ml.clustering import GaussianMixture

    gm = GaussianMixture(
        k=res.k, seed=settings.seed, maxIter=max(settings.max_iter, 100), featuresCol=FEATURES,
        predictionCol="gmm_prediction", probabilityCol="gmm_probability",
    ).fit(prep.df)
    d = len(prep.features)
    # Free parameters of a full-covariance mixture: weights, means, covariances.
    n_params = (res.k - 1) + res.k * d + res.k * d * (d + 1) // 2
    ll = float(gm.summary.logLikelihood)
    res.log_likelihood = ll
    res.bic = -2.0 * ll + n_params * math.log(prep.rows)
    res.aic = -2.0 * ll + 2.0 * n_params


def reference_set(spark: SparkSession, *, rows: int, low: np.ndarray, high: np.ndarray, seed: int, b: int) -> DataFrame:
    """Reference set ``b`` of the gap statistic: ``rows`` points uniform over the box [low, high].

    Generated in Spark from hashes of (seed, b, row, dimension), so it is the same
    whatever the partitioning; laid out as a prepared frame (``_row_id``, ``_f0..``).
    """
    from pyspark.sql import functions as F

    cols = [
        (F.lit(float(lo)) + F.lit(float(hi - lo)) * hash_uniform(F.lit(seed), F.lit(b), F.col(ROW_ID), F.lit(j))).alias(name)
        for j, (lo, hi, name) in enumerate(zip(low, high, feature_columns(len(low)), strict=True))
    ]
    return spark.range(rows).withColumnRenamed("id", ROW_ID).select(ROW_ID, *cols)


# costs(frame, rows, ks, key, label) -> W_k per k: the within-cluster sum of squares of the
# sweep's own algorithm fitted on a prepared frame.
Costs = Callable[[Any, int, list[int], list[str], str], list[float]]


def gap_statistic(
    spark: SparkSession, prep: Prepared, results: list[KResult], settings: ClusterEvalSettings, run: Run,
    *, costs: Costs,
) -> dict[str, Any]:
    """Tibshirani, Walther and Hastie's gap statistic for every evaluated k (fills ``gap``, ``gap_sk``).

    W_k is the within-cluster sum of squares of the same algorithm (``costs``) for the
    data and for each of B uniform reference sets over the data's bounding box. Above
    ``gap_sample`` rows both sides use a seeded sample.
    """
    from pyspark import StorageLevel

    b_sets = settings.gap
    ks = [r.k for r in results]
    sampled = prep.rows > settings.gap_sample
    if sampled:
        data = hash_sample(prep.frame, n_max=settings.gap_sample, rows=prep.rows, seed=settings.seed,
                           key=prep.sample_key).persist(StorageLevel.MEMORY_AND_DISK)
        n = data.count()
        data_w = costs(data, n, ks, prep.sample_key, "gap statistic, data sample: ")
        data.unpersist()
    else:
        n = prep.rows
        data_w = [float(r.training_cost) for r in results]
    ref_logw = np.zeros((b_sets, len(results)))
    for b in range(b_sets):
        label = f"gap statistic, reference set {b + 1} of {b_sets} ({n} rows): "
        run.progress(label.rstrip(": "))
        ref = reference_set(spark, rows=n, low=prep.low, high=prep.high, seed=settings.seed, b=b)
        ref = ref.persist(StorageLevel.MEMORY_AND_DISK)
        ref_logw[b] = [math.log(max(w, np.finfo(float).tiny)) for w in costs(ref, n, ks, [ROW_ID], label)]
        ref.unpersist()
    data_logw = np.array([math.log(max(w, np.finfo(float).tiny)) for w in data_w])
    gaps = ref_logw.mean(axis=0) - data_logw
    sk = ref_logw.std(axis=0) * math.sqrt(1.0 + 1.0 / b_sets)
    for res, g, s in zip(results, gaps, sk, strict=True):
        res.gap, res.gap_sk = float(g), float(s)
    return {"reference_sets": b_sets, "rows": int(n), "sampled": sampled, "gap_sample": settings.gap_sample}
