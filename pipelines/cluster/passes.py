"""One distributed pass = one reduce: a numpy kernel per batch, partials summed on the driver.

:func:`reduce` runs the kernels over a Spark DataFrame (``mapInArrow``): the path for inputs
the engine's tasks cannot read themselves (CSV, catalog tables, the built-in dataset, the
gap statistic's reference data). Over Delta or Parquet files the same kernels run in
:mod:`pipelines.engine`'s tasks (:func:`pipelines.cluster.batched.runner`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# Rows per kernel call (at least; Spark sends 10,000-row batches): measured fastest at
# 4-8k rows, where the (centres x rows) score matrix of a sweep stays in cache.
BATCH_ROWS = 8192


def batch_matrix(batches: list[pa.RecordBatch]) -> np.ndarray:
    """The double columns of ``batches`` as one (n, d) float64 matrix."""
    table = pa.Table.from_batches(batches)
    return np.column_stack([c.to_numpy() for c in table.columns]).astype(np.float64, copy=False)


def _grouped(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[list[pa.RecordBatch]]:
    group: list[pa.RecordBatch] = []
    size = 0
    for b in batches:
        if b.num_rows:
            group.append(b)
            size += b.num_rows
        if size >= rows:
            yield group
            group, size = [], 0
    if group:
        yield group


def partition_partial(
    batches: Iterator[pa.RecordBatch], kernel: Callable[[np.ndarray], np.ndarray], length: int
) -> np.ndarray:
    """Σ of ``kernel`` over one partition's batches (a zero array when it has no rows)."""
    acc = np.zeros(length)
    for group in _grouped(batches, BATCH_ROWS):
        acc += kernel(batch_matrix(group))
    return acc


def reduce(df: DataFrame, kernel: Callable[[np.ndarray], np.ndarray], length: int) -> np.ndarray:
    """Apply ``kernel(x) -> partial`` to every batch of ``df`` and sum the partials.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Only double columns: the rows ``x`` the kernel sees, in column order.
    kernel : callable
        ``(n, d) float64 -> (length,) float64``; must be additive over row batches.
    length : int

    Returns
    -------
    ndarray of shape (length,)
        Each task returns one partial (``length`` doubles as bytes); the driver adds them
        in partition order, so memory does not grow with the rows.
    """
    from pyspark import TaskContext

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        acc = partition_partial(batches, kernel, length)
        yield pa.RecordBatch.from_pydict(
            {"part": pa.array([TaskContext.get().partitionId()], pa.int32()), "partial": pa.array([acc.tobytes()])}
        )

    rows = df.mapInArrow(run, "part int, partial binary").collect()
    total = np.zeros(length)
    for r in sorted(rows, key=lambda r: r["part"]):
        total += np.frombuffer(r["partial"], dtype=np.float64)
    return total
