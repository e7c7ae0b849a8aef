"""Exact Calinski-Harabasz and Davies-Bouldin scores of a Spark DataFrame.

Both equal scikit-learn's ``calinski_harabasz_score`` / ``davies_bouldin_score`` on
the same points and labels (to rounding), in two distributed passes and without
collecting points:

1. count and mean per label (``mapInArrow``; each task returns one row per label);
2. Σ‖x−c‖² and Σ‖x−c‖ per label, with the centroids from pass 1 shipped to the tasks.

Only ``partitions × labels`` small rows reach the driver. :func:`cluster_stats`
returns the per-label statistics so a caller can compute inertia, CH and DB from one
pair of passes (the cluster_eval sweep does this for every k).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.cluster.scores import (
    ClusterStats,
    batch_deviations,
    batch_means,
    calinski_harabasz_from_stats,
    check_number_of_labels,
    davies_bouldin_from_stats,
    merge_means,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

_PASS1_SCHEMA = "label long, n long, mean array<double>, dim int, invalid long"
_PASS2_SCHEMA = "idx int, sse double, sum_dist double"


def features_array(df: DataFrame, features_col: str) -> Column:
    """The features column as ``array<double>``, from a Vector or a numeric array column.

    Raises
    ------
    ValueError
        The column is missing.
    TypeError
        The column is neither a Vector nor an array of numbers.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, NumericType

    if features_col not in df.columns:
        raise ValueError(f"features_col {features_col!r} is not a column of df (columns: {df.columns})")
    dtype = df.schema[features_col].dataType
    if isinstance(dtype, VectorUDT):
        return vector_to_array(F.col(features_col), "float64")
    if isinstance(dtype, ArrayType) and isinstance(dtype.elementType, NumericType):
        return F.col(features_col).cast("array<double>")
    raise TypeError(f"features_col {features_col!r} must be a Vector or array<double> column, got {dtype.simpleString()}")


def _labels_column(df: DataFrame, prediction_col: str) -> Column:
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegralType

    if prediction_col not in df.columns:
        raise ValueError(f"prediction_col {prediction_col!r} is not a column of df (columns: {df.columns})")
    dtype = df.schema[prediction_col].dataType
    if not isinstance(dtype, IntegralType):
        raise TypeError(f"prediction_col {prediction_col!r} must be an integer column, got {dtype.simpleString()}")
    return F.col(prediction_col).cast("long")


def _valid_rows(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Points and labels of the batch's valid rows, the row width, and the invalid count.

    A row is invalid when its label or vector is null, or a coordinate is null, NaN or
    infinite. Rows of a different width than the batch's first valid row are invalid too.
    """
    x_col, y_col = batch.column(0), batch.column(1)
    lengths = pc.list_value_length(x_col).to_numpy(zero_copy_only=False)
    ok = ~(np.isnan(lengths.astype(float)) | y_col.is_null().to_numpy(zero_copy_only=False))
    dim = int(lengths[ok][0]) if ok.any() else 0
    ok &= (lengths == dim) & (dim > 0)
    if not ok.any():
        return np.empty((0, 0)), np.empty(0, dtype=np.int64), -1, batch.num_rows
    if not ok.all():
        mask = pa.array(ok)
        x_col, y_col = x_col.filter(mask), y_col.filter(mask)
    values = x_col.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    x = values.reshape(-1, max(dim, 0))
    finite = np.isfinite(x).all(axis=1)
    labels = y_col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    invalid = int(batch.num_rows - finite.sum())
    return x[finite], labels[finite], dim, invalid


def _pass1(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    acc: dict[int, tuple[int, np.ndarray]] = {}
    dims: set[int] = set()
    invalid = 0
    for batch in batches:
        x, labels, dim, bad = _valid_rows(batch)
        invalid += bad
        if labels.shape[0] == 0:
            continue
        dims.add(dim)
        if len(dims) > 1:
            # A width change between batches: report it on the driver rather than fail here.
            break
        for label, n, mean in zip(*batch_means(x, labels), strict=True):
            if label in acc:
                n0, m0 = acc[label]
                n_new, m_new = merge_means(np.int64(n0), m0, np.int64(n), mean)
                acc[int(label)] = (int(n_new), m_new)
            else:
                acc[int(label)] = (int(n), mean)
    rows = [(lab, n, m.tolist(), min(dims), 0) for lab, (n, m) in acc.items()]
    rows += [(None, 0, [], d, 0) for d in sorted(dims)[1:]]
    rows.append((None, 0, [], -1, invalid))
    yield pa.RecordBatch.from_pylist(
        [dict(zip(["label", "n", "mean", "dim", "invalid"], r, strict=True)) for r in rows],
        schema=pa.schema(
            [("label", pa.int64()), ("n", pa.int64()), ("mean", pa.list_(pa.float64())),
             ("dim", pa.int32()), ("invalid", pa.int64())]
        ),
    )


def _pass2_kernel(labels: np.ndarray, centroids: np.ndarray):
    def kernel(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        k = labels.shape[0]
        sse, sum_dist = np.zeros(k), np.zeros(k)
        for batch in batches:
            x, lab, _, _ = _valid_rows(batch)
            if lab.shape[0]:
                s, d = batch_deviations(x, np.searchsorted(labels, lab), centroids)
                sse += s
                sum_dist += d
        yield pa.RecordBatch.from_pydict(
            {"idx": pa.array(np.arange(k, dtype=np.int32)), "sse": pa.array(sse), "sum_dist": pa.array(sum_dist)}
        )

    return kernel


def cluster_stats(
    df: DataFrame, *, features_col: str = "features", prediction_col: str = "prediction"
) -> ClusterStats:
    """Per-label count, centroid, Σ‖x−c‖² and Σ‖x−c‖ in two distributed passes.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Points and labels.
    features_col : str, default="features"
        A Vector (``pyspark.ml.linalg``) or ``array<double>`` column.
    prediction_col : str, default="prediction"
        An integer label column. Labels need not be 0..k-1.

    Returns
    -------
    ClusterStats
        Sorted by label value.

    Raises
    ------
    ValueError
        A column is missing, a row is null, NaN or infinite, rows differ in width, or
        there are no rows.
    TypeError
        A column has the wrong type.
    """
    base = df.select(features_array(df, features_col).alias("x"), _labels_column(df, prediction_col).alias("y"))
    parts = base.mapInArrow(_pass1, _PASS1_SCHEMA).collect()
    invalid = sum(r["invalid"] for r in parts)
    if invalid:
        raise ValueError(
            f"{invalid} rows have a null label or a null, NaN or infinite value in {features_col!r};"
            " remove or impute them first"
        )
    dims = {r["dim"] for r in parts if r["dim"] >= 0}
    if len(dims) > 1:
        raise ValueError(f"{features_col!r} rows differ in length: {sorted(dims)}")
    merged: dict[int, tuple[np.int64, np.ndarray]] = {}
    # Sorted so the merge order, hence the rounding, does not depend on collect order.
    for r in sorted((r for r in parts if r["label"] is not None), key=lambda r: (r["label"], -r["n"], r["mean"])):
        mean = np.asarray(r["mean"], dtype=np.float64)
        if r["label"] in merged:
            merged[r["label"]] = merge_means(*merged[r["label"]], np.int64(r["n"]), mean)
        else:
            merged[r["label"]] = (np.int64(r["n"]), mean)
    if not merged:
        raise ValueError("df has no rows; Calinski-Harabasz and Davies-Bouldin need at least 3 points")
    labels = np.array(sorted(merged), dtype=np.int64)
    counts = np.array([merged[lab][0] for lab in labels], dtype=np.int64)
    centroids = np.vstack([merged[lab][1] for lab in labels])

    sse, sum_dist = np.zeros(len(labels)), np.zeros(len(labels))
    for r in base.mapInArrow(_pass2_kernel(labels, centroids), _PASS2_SCHEMA).collect():
        sse[r["idx"]] += r["sse"]
        sum_dist[r["idx"]] += r["sum_dist"]
    return ClusterStats(labels, counts, centroids, sse, sum_dist)


def calinski_harabasz_score(
    df: DataFrame, *, features_col: str = "features", prediction_col: str = "prediction"
) -> float:
    """Compute the Calinski-Harabasz score of a clustered Spark DataFrame.

    The ratio of between-cluster to within-cluster dispersion, as
    ``sklearn.metrics.calinski_harabasz_score``; higher is better. Two distributed
    passes (see :func:`cluster_stats`).

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Points and labels.
    features_col : str, default="features"
        A Vector or ``array<double>`` column.
    prediction_col : str, default="prediction"
        An integer label column (any values).

    Returns
    -------
    score : float
        1.0 when every point lies on its cluster's centroid (scikit-learn's convention).

    Raises
    ------
    ValueError
        Unless ``1 < n_labels < n_samples`` (scikit-learn's condition), or on the
        input problems listed in :func:`cluster_stats`.
    """
    return calinski_harabasz_from_stats(cluster_stats(df, features_col=features_col, prediction_col=prediction_col))


def davies_bouldin_score(
    df: DataFrame, *, features_col: str = "features", prediction_col: str = "prediction"
) -> float:
    """Compute the Davies-Bouldin score of a clustered Spark DataFrame.

    The mean, over clusters, of the largest ratio of summed within-cluster distances
    to between-centroid distance, as ``sklearn.metrics.davies_bouldin_score``; lower is
    better, 0 is the minimum. Two distributed passes (see :func:`cluster_stats`).

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Points and labels.
    features_col : str, default="features"
        A Vector or ``array<double>`` column.
    prediction_col : str, default="prediction"
        An integer label column (any values).

    Returns
    -------
    score : float
        0.0 when all clusters are points or all centroids coincide (scikit-learn's
        convention); coincident pairs of centroids are not compared with each other.

    Raises
    ------
    ValueError
        Unless ``1 < n_labels < n_samples`` (scikit-learn's condition), or on the
        input problems listed in :func:`cluster_stats`.
    """
    return davies_bouldin_from_stats(cluster_stats(df, features_col=features_col, prediction_col=prediction_col))


__all__ = [
    "ClusterStats",
    "calinski_harabasz_score",
    "check_number_of_labels",
    "cluster_stats",
    "davies_bouldin_score",
    "features_array",
]
