"""Per-column weighted summaries for GMM fitting (kernels: numpy/polars/pyarrow, no Spark).

One pass over the data turns every requested column into a bounded summary that EM can
run on instead of the rows:

1. Per partition (:func:`partition_partials`), each finite value falls into a *fine bin*
   whose key comes from the value's IEEE-754 bits: sign, exponent and the top
   :data:`FINE_BITS` mantissa bits, so a bin spans at most 2**-12 of its magnitude and
   the keys sort in value order whatever the data's range. Inside a bin the offset from
   the bin's edge is quantised to 2**-24 of the bin width and summed as *integers* (count,
   sum, and the sum of squares split in 12-bit halves so no int64 overflows), so
   partial sums add up exactly in any order: the summary, and the fit, do not depend on
   the partitioning. Nulls/NaN/inf are counted, never binned; a mixed column's listed
   special values are counted apart; a categorical column is counted per value (null is
   a category).
2. Spark sums the partials by (column, part, key, category).
3. Per column (:func:`coarsen`), fine bins become (count, mean, variance) points. When a
   column has more than ``max_bins`` fine bins they are merged into at most ``max_bins``
   groups, cutting both at equal-count quantiles and at equal-width steps of a robust
   range, so dense regions and sparse tails both keep resolution. Merging pools the
   moments exactly, so each point's within-bin variance is known and EM can use it.

A column with at most ``max_bins`` distinct values therefore gets exact (value, count)
pairs (every bin holds one value, variance 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

FINE_BITS = 12  # mantissa bits in a fine-bin key: bins are at most 2**-12 of |x| wide
_SHIFT = 52 - FINE_BITS
Q_BITS = 24  # in-bin offsets are quantised to 2**-24 of the bin width
_Q_SPLIT = 12  # q = qh * 2**12 + ql, so squares of each half stay below 2**24
_MERGE_EVERY = 32  # merge per-batch partials every N batches to bound partition memory
ROBUST_QUANTILES = (0.001, 0.999)  # range of the equal-width cuts when coarsening

PART_BIN, PART_NULL, PART_SPECIAL, PART_CATEGORY = "bin", "null", "special", "category"

PARTIAL_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
        pa.field("key", pa.int64()),  # fine-bin key (bin) or special-value index (special)
        pa.field("category", pa.string()),  # category value (categorical); null = the null category
        pa.field("n", pa.int64(), nullable=False),
        pa.field("sq", pa.int64()),  # sum of quantised offsets
        pa.field("sqh2", pa.int64()),  # sum of high-half squares
        pa.field("sqhl", pa.int64()),  # sum of high*low products
        pa.field("sql2", pa.int64()),  # sum of low-half squares
        pa.field("vmin", pa.float64()),
        pa.field("vmax", pa.float64()),
    ]
)

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
        pa.field("key", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("var", pa.float64()),
        pa.field("vmin", pa.float64()),
        pa.field("vmax", pa.float64()),
    ]
)


@dataclass(frozen=True)
class ColumnSpec:
    """What to summarise for one column: its kind and, for a mixed column, its special values."""

    column: str
    column_type: str  # "continuous" | "mixed" | "categorical"
    specials: tuple[float, ...] = ()


@dataclass(frozen=True)
class ColumnSummary:
    """The bounded summary of one column.

    ``values``/``counts``/``variances`` are the weighted points of the finite, non-special
    values, sorted by value (``exact`` when they are the distinct values themselves);
    ``special_counts[i]`` counts ``spec.specials[i]``; ``categories`` maps a category (None
    = null) to its count.
    """

    spec: ColumnSpec
    n_rows: int
    n_null: int
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0))
    variances: np.ndarray = field(default_factory=lambda: np.empty(0))
    exact: bool = True
    distinct_lower_bound: int = 0
    special_counts: tuple[int, ...] = ()
    categories: Mapping[str | None, int] = field(default_factory=dict)


def fine_bins(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fine-bin keys and quantised in-bin offsets of finite values.

    Parameters
    ----------
    x : ndarray of shape (n,)
        Finite float64 values.

    Returns
    -------
    keys : ndarray of int64
        Order-preserving bin keys (``keys`` sort as ``x`` does); ``-0.0`` and ``0.0`` share key 0.
    q : ndarray of int64
        ``|x - edge| / width`` quantised to integers in ``[0, 2**Q_BITS]``.
    """
    mag = np.abs(np.asarray(x, dtype=np.float64))
    k = mag.view(np.int64) >> _SHIFT
    lo, width = _bin_edges(k)
    q = np.clip(np.rint((mag - lo) / width * (1 << Q_BITS)), 0, 1 << Q_BITS).astype(np.int64)
    keys = np.where(np.signbit(x) & (mag > 0), -k - 1, k)
    return keys, q


def _bin_edges(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower magnitude edge and width of the bins with magnitude keys ``k``."""
    lo = (k << _SHIFT).view(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        width = ((k + 1) << _SHIFT).view(np.float64) - lo
    # the very top bin's upper edge is inf; its width is 2**-FINE_BITS of its edge
    return lo, np.where(np.isfinite(width), width, lo * 2.0**-FINE_BITS)


def bin_moments(keys, n, sq, sqh2, sqhl, sql2) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance of each fine bin from its exact integer sums."""
    keys = np.asarray(keys, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    mag_k = np.where(keys < 0, -keys - 1, keys)
    lo, width = _bin_edges(mag_k)
    unit = width * 2.0**-Q_BITS
    sign = np.where(keys < 0, -1.0, 1.0)
    sq_o = np.asarray(sq, dtype=object)
    s2 = (
        np.asarray(sqh2, dtype=object) * (1 << (2 * _Q_SPLIT))
        + 2 * np.asarray(sqhl, dtype=object) * (1 << _Q_SPLIT)
        + np.asarray(sql2, dtype=object)
    )
    n_o = n.astype(object)
    # exact integer numerator n*S2 - S1^2 (>= 0), converted once
    var_num = (n_o * s2 - sq_o * sq_o).astype(np.float64)
    mean_q = np.asarray(sq, dtype=np.float64) / n
    mean = sign * (lo + mean_q * unit)
    var = var_num / (n.astype(np.float64) ** 2) * unit**2
    return mean, var


def _partial_bins(x: np.ndarray) -> pl.DataFrame:
    keys, q = fine_bins(x)
    qh, ql = q >> _Q_SPLIT, q & ((1 << _Q_SPLIT) - 1)
    frame = pl.DataFrame({"key": keys, "q": q, "qh": qh, "ql": ql, "x": x})
    return frame.group_by("key").agg(
        n=pl.len().cast(pl.Int64),
        sq=pl.col("q").sum(),
        sqh2=(pl.col("qh") * pl.col("qh")).sum(),
        sqhl=(pl.col("qh") * pl.col("ql")).sum(),
        sql2=(pl.col("ql") * pl.col("ql")).sum(),
        vmin=pl.col("x").min(),
        vmax=pl.col("x").max(),
    )


def _merge_bins(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if len(frames) == 1:
        return frames[0]
    return (
        pl.concat(frames)
        .group_by("key")
        .agg(
            pl.col("n", "sq", "sqh2", "sqhl", "sql2").sum(),
            pl.col("vmin").min(),
            pl.col("vmax").max(),
        )
    )


class _ColumnPartial:
    """Running partial summary of one column within one partition."""

    def __init__(self, spec: ColumnSpec) -> None:
        self.spec = spec
        self.n_null = 0
        self.special_n = [0] * len(spec.specials)
        self.bins: list[pl.DataFrame] = []
        self.categories: list[pl.DataFrame] = []

    def add(self, arr: pa.Array) -> None:
        if self.spec.column_type == "categorical":
            series = pl.Series("category", arr)
            if series.dtype != pl.String:
                series = series.cast(pl.String)
            counts = series.value_counts(name="n")
            self.categories.append(counts.with_columns(pl.col("n").cast(pl.Int64)))
            if len(self.categories) >= _MERGE_EVERY:
                self.categories = [self._merged_categories()]
            return
        x = pl.Series(arr).cast(pl.Float64).fill_null(np.nan).to_numpy()
        finite = np.isfinite(x)
        self.n_null += int(x.size - finite.sum())
        x = x[finite] + 0.0  # + 0.0 turns -0.0 into 0.0
        for i, special in enumerate(self.spec.specials):
            hit = x == special
            self.special_n[i] += int(hit.sum())
            x = x[~hit]
        if x.size:
            self.bins.append(_partial_bins(x))
            if len(self.bins) >= _MERGE_EVERY:
                self.bins = [_merge_bins(self.bins)]

    def _merged_categories(self) -> pl.DataFrame:
        return pl.concat(self.categories).group_by("category").agg(pl.col("n").sum())

    def rows(self) -> pa.Table:
        col, tables = self.spec.column, []
        if self.spec.column_type == "categorical":
            if self.categories:
                cats = self._merged_categories()
                tables.append(
                    cats.select(
                        pl.lit(col).alias("column"), pl.lit(PART_CATEGORY).alias("part"), "category", "n"
                    ).to_arrow()
                )
        else:
            tables.append(
                pa.table({"column": [col], "part": [PART_NULL], "n": pa.array([self.n_null], pa.int64())})
            )
            if self.special_n:
                values = pa.array(self.spec.specials, pa.float64())
                tables.append(
                    pa.table(
                        {
                            "column": [col] * len(self.special_n),
                            "part": [PART_SPECIAL] * len(self.special_n),
                            "key": pa.array(range(len(self.special_n)), pa.int64()),
                            "n": pa.array(self.special_n, pa.int64()),
                            "vmin": values,
                            "vmax": values,
                        }
                    )
                )
            if self.bins:
                bins = _merge_bins(self.bins)
                tables.append(
                    bins.select(pl.lit(col).alias("column"), pl.lit(PART_BIN).alias("part"), pl.all()).to_arrow()
                )
        return pa.concat_tables([_conform(t, PARTIAL_SCHEMA) for t in tables]) if tables else PARTIAL_SCHEMA.empty_table()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Add missing columns as nulls and cast to ``schema``'s order and types."""
    n = table.num_rows
    cols = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def partition_partials(batches: Iterable[pa.RecordBatch], specs: Sequence[ColumnSpec]) -> Iterator[pa.RecordBatch]:
    """Partial summaries of one partition (the ``mapInArrow`` body of the summary pass).

    Parameters
    ----------
    batches : iterable of pyarrow.RecordBatch
        The partition's rows, holding at least the columns named in ``specs``.
    specs : sequence of ColumnSpec
        The columns to summarise.

    Yields
    ------
    pyarrow.RecordBatch
        Rows of :data:`PARTIAL_SCHEMA`, at most one per (column, fine bin / special /
        category) plus one null-count row per numeric column.
    """
    partials = [_ColumnPartial(spec) for spec in specs]
    for batch in batches:
        for partial in partials:
            partial.add(batch.column(partial.spec.column))
    for partial in partials:
        yield from partial.rows().to_batches()


def coarsen(table: pa.Table, *, max_bins: int) -> pa.Table:
    """Turn one column's summed partials into at most ``max_bins`` weighted points.

    Parameters
    ----------
    table : pyarrow.Table
        Rows of :data:`PARTIAL_SCHEMA` for a single column, already summed per
        (part, key, category) (any row order).
    max_bins : int
        Most points kept for the finite, non-special values.

    Returns
    -------
    pyarrow.Table
        Rows of :data:`SUMMARY_SCHEMA`: the null, special and category rows unchanged
        (``mean`` = the special value), and the bins as (n, mean, var, vmin, vmax) sorted by value.
    """
    if max_bins < 2:
        raise ValueError(f"max_bins must be >= 2, got {max_bins}")
    part = table.column("part").to_numpy(zero_copy_only=False)
    other = table.filter(pa.array(part != PART_BIN))
    other = other.append_column("mean", other.column("vmin")).append_column("var", pa.nulls(other.num_rows, pa.float64()))
    out = [_conform(other, SUMMARY_SCHEMA)]
    bins = table.filter(pa.array(part == PART_BIN)).sort_by("key")
    if bins.num_rows:
        column = bins.column("column")[0].as_py()
        keys = bins.column("key").to_numpy()
        n = bins.column("n").to_numpy()
        mean, var = bin_moments(keys, n, *(bins.column(c).to_numpy() for c in ("sq", "sqh2", "sqhl", "sql2")))
        vmin, vmax = bins.column("vmin").to_numpy(), bins.column("vmax").to_numpy()
        # a single-valued bin is exact: its value is vmin, its variance 0
        single = vmin == vmax
        mean, var = np.where(single, vmin, mean), np.where(single, 0.0, var)
        if keys.size > max_bins:
            keys, n, mean, var, vmin, vmax = _merge_groups(
                _group_ids(n, mean, max_bins), keys, n, mean, var, vmin, vmax
            )
        out.append(
            pa.table(
                {
                    "column": [column] * keys.size,
                    "part": [PART_BIN] * keys.size,
                    "key": keys,
                    "category": pa.nulls(keys.size, pa.string()),
                    "n": n,
                    "mean": mean,
                    "var": np.maximum(var, 0.0),
                    "vmin": vmin,
                    "vmax": vmax,
                },
                schema=SUMMARY_SCHEMA,
            )
        )
    return pa.concat_tables(out)


def _group_ids(n: np.ndarray, mean: np.ndarray, max_bins: int) -> np.ndarray:
    """Non-decreasing group ids over value-sorted bins: equal-count x equal-width cuts."""
    n_quantile = max_bins // 2
    n_uniform = max_bins - n_quantile - 2  # two more groups hold the tails beyond the robust range
    cum = np.cumsum(n)
    total = cum[-1]
    mid = (cum - n / 2.0) / total
    q_id = np.minimum((mid * n_quantile).astype(np.int64), n_quantile - 1)
    lo = mean[np.searchsorted(cum, ROBUST_QUANTILES[0] * total)]
    hi = mean[min(np.searchsorted(cum, ROBUST_QUANTILES[1] * total), mean.size - 1)]
    if hi > lo:
        u = np.floor((mean - lo) / (hi - lo) * n_uniform)
        u_id = np.clip(u, -1, n_uniform).astype(np.int64) + 1
    else:
        u_id = np.zeros(mean.size, dtype=np.int64)
    # both ids are non-decreasing along the sorted bins, so their pairs change at most
    # n_quantile + n_uniform + 1 times: a bounded number of contiguous groups
    return q_id * (n_uniform + 2) + u_id


def _merge_groups(gid, keys, n, mean, var, vmin, vmax):
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    nn = np.add.reduceat(n, starts)
    g_mean = np.add.reduceat(n * mean, starts) / nn
    # pooled variance: within-bin plus between-bin, relative to the group mean
    dev = mean - np.repeat(g_mean, np.diff(np.r_[starts, mean.size]))
    g_var = np.add.reduceat(n * (var + dev * dev), starts) / nn
    return (
        keys[starts],
        nn,
        g_mean,
        g_var,
        np.minimum.reduceat(vmin, starts),
        np.maximum.reduceat(vmax, starts),
    )


def column_summary(table: pa.Table, spec: ColumnSpec) -> ColumnSummary:
    """Build a :class:`ColumnSummary` from one column's :func:`coarsen` output."""
    part = table.column("part").to_numpy(zero_copy_only=False)
    n = table.column("n").to_numpy()
    n_null = int(n[part == PART_NULL].sum())
    if spec.column_type == "categorical":
        cats = table.filter(pa.array(part == PART_CATEGORY))
        categories = dict(zip(cats.column("category").to_pylist(), cats.column("n").to_pylist(), strict=True))
        return ColumnSummary(
            spec=spec, n_rows=int(sum(categories.values())), n_null=int(categories.get(None, 0)), categories=categories
        )
    specials = table.filter(pa.array(part == PART_SPECIAL))
    special_counts = [0] * len(spec.specials)
    for k, c in zip(specials.column("key").to_pylist(), specials.column("n").to_pylist(), strict=True):
        special_counts[k] = int(c)
    bins = table.filter(pa.array(part == PART_BIN)).sort_by("key")
    vmin, vmax = bins.column("vmin").to_numpy(), bins.column("vmax").to_numpy()
    single = vmin == vmax
    return ColumnSummary(
        spec=spec,
        n_rows=int(n.sum()),
        n_null=n_null,
        values=bins.column("mean").to_numpy().astype(np.float64),
        counts=bins.column("n").to_numpy().astype(np.float64),
        variances=bins.column("var").to_numpy().astype(np.float64),
        exact=bool(single.all()),
        distinct_lower_bound=int(np.where(single, 1, 2).sum()),
        special_counts=tuple(special_counts),
    )


def summarize_arrays(columns: Mapping[str, pa.Array], specs: Sequence[ColumnSpec], *, max_bins: int) -> dict[str, ColumnSummary]:
    """The whole summary pipeline in memory (no Spark): partials -> sum -> coarsen.

    The Spark pass runs the same three steps distributed; this is what kernels' tests and
    small local inputs use.
    """
    batch = pa.RecordBatch.from_pydict({s.column: columns[s.column] for s in specs})
    partials = pa.Table.from_batches(list(partition_partials([batch], specs)), schema=PARTIAL_SCHEMA)
    out = {}
    for spec in specs:
        rows = partials.filter(pc.equal(partials.column("column"), spec.column))
        out[spec.column] = column_summary(coarsen(rows, max_bins=max_bins), spec)
    return out
