"""Tokenising kernels: numpy/Polars only, no Spark.

Everything here is row-local (an output row depends only on its own input row), so
the kernels give the same result whichever scheduler of :mod:`pipelines.engine` runs
them over a table's files, and whatever the files or batches.

Bins
----
A column is described by its edges ``e_0 <= e_1 <= ... <= e_n`` (``n`` effective
bins; strictly increasing except for a constant column, whose edges are ``[v, v]``).
The bin of a finite value ``x`` is::

    bin(x) = clip(numpy.searchsorted(edges, x, side="right") - 1, 0, n - 1)
           = clip(numpy.digitize(x, edges) - 1, 0, n - 1)

so bin ``i`` holds ``e_i <= x < e_(i+1)``, the last bin is closed (``x == e_n`` is in
bin ``n - 1``), and values below ``e_0`` or above ``e_n`` go to the first or last bin
and are flagged out of range.

Token layout
------------
Per column, with ``n`` its effective number of bins (``n_bins`` in the tokenizer
table)::

    0 .. n-1   the bins, in increasing value order
    n          null
    n + 1      NaN
    n + 2      -inf
    n + 3      +inf

The vocabulary of a column is ``n + 4`` tokens. The token dtype is the smallest
signed integer type (Delta has no unsigned types) that holds the largest vocabulary
the requested number of bins allows (:func:`token_dtype`), so the tokens schema
depends on ``--bins`` only, not on the data.

Methods
-------
``quantile``: edges at the ``k / n`` quantiles of the finite values (computed once
over the whole table in Spark); duplicate edges from ties collapse
(:func:`quantile_edges`).

``uniform``: the Chronos ``MeanScaleUniformBins`` tokenizer with one scale per
column: ``scale = mean(|x|)`` over the finite values of the whole column (1 when
that is not positive), bin centres ``linspace(-15, 15, n) * scale`` and bin
boundaries half-way between centres (:func:`uniform_edges`). Chronos's outermost
boundaries are +-1e20; here they are the centres +- half a bin width, and values
beyond them are clipped to the first/last bin exactly as Chronos clips them, but are
also counted as out of range.

Detokenising maps a bin to its value: the mean of the fit values in that bin (stored
at fit time; the centre when the bin was empty at fit time) or the bin centre
``(lower + upper) / 2``. Reserved tokens map back to null, NaN, -inf and +inf. A
token outside the column's vocabulary (or a null token) becomes null and is counted
by the stage as invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from pipelines.columns import ROW_ID

#: Reserved token offsets from ``n_bins`` (see the module docstring).
RESERVED = ("null", "nan", "neg_inf", "pos_inf")
NULL_OFFSET, NAN_OFFSET, NEG_INF_OFFSET, POS_INF_OFFSET = range(len(RESERVED))

#: Fixed point of the in-range fit offsets (in [0, 1] bin widths): ``round(d * 2**32)``
#: summed as 64-bit integers is exact and order-free for up to 2**31 values per bin, and
#: resolves a bin mean to 2**-33 of its width.
OFFSET_SCALE = 2.0**32

#: Chronos's range of scaled values for the ``uniform`` method.
UNIFORM_LIMIT = 15.0

Kernel = Callable[[pl.DataFrame], pl.DataFrame]

_DTYPE_MAX = {
    pl.Int8: np.iinfo(np.int8).max,
    pl.Int16: np.iinfo(np.int16).max,
    pl.Int32: np.iinfo(np.int32).max,
    pl.Int64: np.iinfo(np.int64).max,
}


@dataclass(frozen=True)
class ColumnBins:
    """Fitted bins of one column, as plain data.

    Parameters
    ----------
    column : str
        The column name.
    edges : ndarray of shape (n_bins + 1,)
        Non-decreasing bin edges (strictly increasing unless ``n_bins == 1``).
    means : ndarray of shape (n_bins,), optional
        Mean of the fit values per bin; NaN for a bin that was empty at fit time.
    """

    column: str
    edges: np.ndarray
    means: np.ndarray | None = None

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2:
            raise ValueError(f"column {self.column!r}: need at least 2 edges, got {edges.size}")
        if not np.all(np.isfinite(edges)):
            raise ValueError(f"column {self.column!r}: edges must be finite")
        if np.any(np.diff(edges) < 0) or (edges.size > 2 and np.any(np.diff(edges) <= 0)):
            raise ValueError(f"column {self.column!r}: edges must be strictly increasing")
        object.__setattr__(self, "edges", edges)
        if self.means is not None:
            means = np.asarray(self.means, dtype=np.float64)
            if means.shape != (edges.size - 1,):
                raise ValueError(f"column {self.column!r}: expected {edges.size - 1} means, got {means.shape}")
            object.__setattr__(self, "means", means)

    @property
    def n_bins(self) -> int:
        return self.edges.size - 1

    @property
    def centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2.0

    def bin_values(self, value: Literal["mean", "centre"]) -> np.ndarray:
        """The value each bin detokenises to: its fit mean (centre if it was empty) or its centre."""
        if value == "centre" or self.means is None:
            return self.centres
        if value != "mean":
            raise ValueError(f"value must be 'mean' or 'centre', got {value!r}")
        return np.where(np.isnan(self.means), self.centres, self.means)


# --------------------------------------------------------------------------- fitting


def token_dtype(n_bins: int) -> pl.DataType:
    """Smallest signed integer dtype holding every token of ``n_bins`` bins (ids ``0 .. n_bins + 3``).

    Parameters
    ----------
    n_bins : int
        Number of bins, >= 1.

    Returns
    -------
    polars.Int8, polars.Int16, polars.Int32 or polars.Int64
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    top = n_bins + len(RESERVED) - 1
    return next(dtype for dtype, limit in _DTYPE_MAX.items() if top <= limit)


def quantile_probabilities(n_bins: int) -> list[float]:
    """The inner probabilities ``k / n_bins`` for ``k = 1 .. n_bins - 1``.

    The outer edges are the exact minimum and maximum of the finite values, so the fit
    data has no out-of-range values.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return [k / n_bins for k in range(1, n_bins)]


def quantile_edges(minimum: float, inner: Sequence[float], maximum: float) -> np.ndarray:
    """Edges from the minimum, the inner quantiles and the maximum, duplicates collapsed.

    Heavy ties make several quantiles equal; equal edges collapse into one, so the
    column gets fewer (effective) bins than requested. A constant column gets the one
    bin ``[v, v]``.

    Parameters
    ----------
    minimum, maximum : float
        The exact minimum and maximum of the finite values.
    inner : sequence of float
        The (approximate) inner quantiles, values of the column.

    Returns
    -------
    ndarray of shape (n_effective + 1,)
    """
    raw = np.asarray([minimum, *inner, maximum], dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        raise ValueError("quantile edges must be finite")
    # Approximate quantiles are values of the column, so they already lie in
    # [minimum, maximum]; clipping only guards against a sketch returning otherwise.
    edges = np.unique(np.clip(raw, minimum, maximum))
    return edges if edges.size > 1 else np.repeat(edges, 2)


def uniform_scale(mean_abs: float | None) -> float:
    """Chronos's mean scale: ``mean(|x|)``, or 1 when that is not a positive finite number."""
    if mean_abs is None or not np.isfinite(mean_abs) or mean_abs <= 0:
        return 1.0
    return float(mean_abs)


def uniform_edges(n_bins: int, scale: float) -> np.ndarray:
    """Chronos's uniform bins in the column's units.

    Centres are ``linspace(-15, 15, n_bins) * scale``; inner boundaries are half-way
    between centres (as in Chronos); the outer edges are the outer centres +- half a
    bin width.

    Parameters
    ----------
    n_bins : int
        Number of bins, >= 2.
    scale : float
        The column's scale (:func:`uniform_scale`), > 0.

    Returns
    -------
    ndarray of shape (n_bins + 1,)
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2 for the uniform method, got {n_bins}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    centres = np.linspace(-UNIFORM_LIMIT, UNIFORM_LIMIT, n_bins)
    half = (centres[1] - centres[0]) / 2.0
    scaled = np.concatenate([[centres[0] - half], (centres[1:] + centres[:-1]) / 2.0, [centres[-1] + half]])
    return scaled * scale


# --------------------------------------------------------------------------- tokenising


@dataclass(frozen=True)
class Tokenized:
    """Tokens of one column plus what the stage counts and aggregates."""

    tokens: np.ndarray  # int64, one per row
    out_of_range: np.ndarray  # int8: -1 below the first edge, +1 above the last, 0 otherwise
    finite: np.ndarray  # bool


def tokenize_values(values: pl.Series, bins: ColumnBins) -> Tokenized:
    """Tokenise one column (see the module docstring for the bin rule and token layout).

    Parameters
    ----------
    values : polars.Series
        Numeric values, possibly with nulls, NaN and infinities.
    bins : ColumnBins

    Returns
    -------
    Tokenized
    """
    # The token rule lives in one place, tokens_expr (what the tokenising kernel runs).
    tokens = values.to_frame(bins.column).select(tokens_expr(bins)).to_series().to_numpy()
    x = values.cast(pl.Float64).to_numpy()
    out_of_range = (x > bins.edges[-1]).astype(np.int8) - (x < bins.edges[0]).astype(np.int8)
    finite = tokens < bins.n_bins
    out_of_range[~finite] = 0
    return Tokenized(tokens=tokens, out_of_range=out_of_range, finite=finite)


def _check_columns(df: pl.DataFrame, columns: Sequence[ColumnBins], *, row_id: bool = True) -> None:
    missing = [c.column for c in columns if c.column not in df.columns]
    if row_id and ROW_ID not in df.columns:
        missing.insert(0, ROW_ID)
    if missing:
        raise KeyError(f"kernel input lacks columns {missing}")


def tokenize_kernel(columns: Sequence[ColumnBins], *, dtype: pl.DataType) -> Kernel:
    """Kernel: ``_row_id`` + numeric columns -> ``_row_id`` + one token column per column.

    Parameters
    ----------
    columns : sequence of ColumnBins
    dtype : polars integer dtype
        The token dtype (:func:`token_dtype` of the requested number of bins); must hold
        every column's vocabulary.

    Returns
    -------
    callable polars.DataFrame -> polars.DataFrame
    """
    columns = list(columns)
    limit = _DTYPE_MAX.get(dtype)
    if limit is None:
        raise ValueError(f"dtype must be a signed polars integer type, got {dtype}")
    for c in columns:
        if c.n_bins + len(RESERVED) - 1 > limit:
            raise ValueError(f"column {c.column!r}: {c.n_bins} bins do not fit tokens of dtype {dtype}")

    exprs = [tokens_expr(c).cast(dtype).alias(c.column) for c in columns]

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        _check_columns(df, columns)
        # One Polars select: the columns are tokenised in parallel on Polars' thread pool
        # (each column's BinLookup is numpy, which releases the GIL inside its array operations).
        return df.select(pl.col(ROW_ID), *exprs)

    return kernel


def tokens_expr(bins: ColumnBins) -> pl.Expr:
    """The tokens of one column as a Polars expression; equal to :func:`tokenize_values`.

    ``searchsorted(inner edges, x, side="right")`` is the bin (module docstring), computed by
    :class:`BinLookup`; reserved tokens replace it for null, NaN and infinities.
    """
    n = bins.n_bins
    x = pl.col(bins.column).cast(pl.Float64)
    lookup = BinLookup(bins.edges[1:-1])
    bin_index = x.map_batches(lambda s: pl.Series(lookup(s.to_numpy()), dtype=pl.Int64), return_dtype=pl.Int64,
                              is_elementwise=True)
    return (
        pl.when(x.is_null()).then(pl.lit(n + NULL_OFFSET, pl.Int64))
        .when(x.is_nan()).then(pl.lit(n + NAN_OFFSET, pl.Int64))
        .when(x == float("-inf")).then(pl.lit(n + NEG_INF_OFFSET, pl.Int64))
        .when(x == float("inf")).then(pl.lit(n + POS_INF_OFFSET, pl.Int64))
        .otherwise(bin_index)
    )


#: Guide-table cells per inner edge, and the most edges two neighbouring cells may hold
#: before :class:`BinLookup` falls back to a plain binary search.
GUIDE_CELLS_PER_EDGE = 4
GUIDE_MAX_STEPS = 16


class BinLookup:
    """``x -> numpy.searchsorted(inner, x, side="right")`` for float arrays, exactly, but faster.

    A binary search over 255 edges costs ~40 ns a value. Here a uniform guide table over
    ``[inner[0], inner[-1]]`` (:data:`GUIDE_CELLS_PER_EDGE` cells per edge) gives each value
    a lower bound of its answer, from which it steps forward over the few edges of its cell;
    a last check sends any value whose floating-point cell was off to the binary search, so
    the result is the searchsorted one for every value. Quantile edges put few edges in a
    cell; where two neighbouring cells hold more than :data:`GUIDE_MAX_STEPS` (edges
    crowded by a far outlier range), or there are fewer than two distinct edges, the lookup
    is the plain binary search (``guided`` is False). Non-finite values get an arbitrary
    index (the token rule replaces them).
    """

    def __init__(self, inner: np.ndarray) -> None:
        self.inner = np.ascontiguousarray(inner, dtype=np.float64)
        m = self.inner.size
        self.cells = GUIDE_CELLS_PER_EDGE * m
        width = float(self.inner[-1] - self.inner[0]) if m else 0.0
        self.scale = self.cells / width if m > 1 and width > 0 else 0.0
        self.guided = bool(np.isfinite(self.scale) and self.scale > 0)
        if self.guided:
            starts = self.inner[0] + np.arange(self.cells + 1) / self.scale
            below = np.searchsorted(self.inner, starts, side="left")  # edges < cell start
            self.guided = bool(np.max(below[2:] - below[:-2], initial=0) <= GUIDE_MAX_STEPS)
            # Lower bound for cell g: the edges below the start of cell g - 1 (right even
            # when the computed cell of a value is one too high).
            self.start = np.r_[0, below[:-1]].astype(np.int64)
            self.right = np.r_[self.inner, np.inf]
            self.left = np.r_[-np.inf, self.inner]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.guided:
            return np.searchsorted(self.inner, x, side="right").astype(np.int64)
        lo = self.inner[0]
        x = np.where(np.isfinite(x), x, lo)
        with np.errstate(over="ignore"):
            cell = (x - lo) * self.scale
        np.clip(cell, 0, self.cells, out=cell)
        idx = self.start[cell.astype(np.intp)]
        while True:
            step = self.right[idx] <= x
            if not step.any():
                break
            idx += step
        off = self.left[idx] > x
        if off.any():
            idx[off] = np.searchsorted(self.inner, x[off], side="right")
        return idx


def fit_stats_kernel(columns: Sequence[ColumnBins]) -> Kernel:
    """Kernel for the fit-time statistics pass: per column ``i`` three columns.

    ``_t{i}`` (Int32) the token, ``_o{i}`` (Int8) the out-of-range flag (-1 below, +1
    above, 0 otherwise), ``_d{i}`` (Float64) the offset ``(x - lower) / width`` of the
    value in its bin, in bin widths (width 1 for the zero-width bin of a constant
    column; null for reserved tokens). Positional names, so no input column name can
    collide. The stage aggregates count, sum(d) and sum(d^2) per (column, token, flag):
    bin means are ``lower + width * sum(d) / count`` (:func:`bin_means`) and the
    reconstruction errors follow exactly from the sums (:func:`reconstruction_sse`)
    without a second pass. Offsets lie in [0, 1] (except out-of-range values), which
    keeps the sums well conditioned and lets the stage sum them exactly in fixed point
    (:data:`OFFSET_SCALE`), so the means do not depend on the partitioning; a bin of tied values gets exactly
    their value as mean.
    """
    columns = list(columns)

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        _check_columns(df, columns, row_id=False)
        out: list[pl.Series] = []
        for i, c in enumerate(columns):
            values = df.get_column(c.column)
            tok = tokenize_values(values, c)
            b = np.where(tok.tokens < c.n_bins, tok.tokens, 0)
            diff = (values.cast(pl.Float64).to_numpy() - c.edges[b]) / bin_units(c)[b]
            out.append(pl.Series(f"_t{i}", tok.tokens, dtype=pl.Int64).cast(pl.Int32))
            out.append(pl.Series(f"_o{i}", tok.out_of_range))
            out.append(_masked_series(f"_d{i}", diff, ~tok.finite))
        return pl.DataFrame(out)

    return kernel


PARTIAL_SCHEMA = {
    "col": pl.Int32, "token": pl.Int32, "oor": pl.Int8, "n": pl.Int64, "fixed": pl.Int64, "s": pl.Float64, "ss": pl.Float64,
}


def fit_partial_kernel(columns: Sequence[ColumnBins]) -> Kernel:
    """Kernel: :func:`fit_stats_kernel` aggregated within the batch, one row per (column, token, flag).

    Columns (:data:`PARTIAL_SCHEMA`): ``col`` (position in ``columns``), ``token``,
    ``oor``; ``n`` values, ``fixed`` the exact fixed-point sum of the in-range offsets
    (``round(d * OFFSET_SCALE)`` as 64-bit integers), ``s`` and ``ss`` the sums of ``d``
    and ``d^2``. A batch of any size becomes at most ``columns x (bins + 4) x 3`` rows,
    so only these partial sums leave the Python worker; adding them up over batches
    gives the same ``n`` and ``fixed`` whatever the batching.
    """
    columns = list(columns)
    stats = fit_stats_kernel(columns)

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        per_row = stats(df)
        long = pl.concat([
            per_row.select(
                pl.lit(i, pl.Int32).alias("col"),
                pl.col(f"_t{i}").alias("token"),
                pl.col(f"_o{i}").alias("oor"),
                pl.col(f"_d{i}").alias("d"),
            )
            for i in range(len(columns))
        ])
        d = pl.col("d")
        return (
            long.group_by("col", "token", "oor")
            .agg(
                pl.len().cast(pl.Int64).alias("n"),
                pl.when(pl.col("oor") == 0).then((d * OFFSET_SCALE).round(0).cast(pl.Int64)).sum().alias("fixed"),
                d.sum().alias("s"),
                (d * d).sum().alias("ss"),
            )
            .cast(PARTIAL_SCHEMA)
            .select(list(PARTIAL_SCHEMA))
        )

    return kernel


def bin_units(bins: ColumnBins) -> np.ndarray:
    """The unit of the fit offsets per bin: its width, or 1 for a zero-width bin."""
    width = np.diff(bins.edges)
    return np.where(width > 0, width, 1.0)


def bin_means(bins: ColumnBins, count: np.ndarray, sum_diff: np.ndarray) -> np.ndarray:
    """Bin means ``lower + unit * sum_diff / count`` (NaN for empty bins), from the fit statistics."""
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, bins.edges[:-1] + bin_units(bins) * (np.asarray(sum_diff) / count), np.nan)


def reconstruction_sse(
    bins: ColumnBins, count: np.ndarray, sum_diff: np.ndarray, sum_sq_diff: np.ndarray
) -> tuple[float, float]:
    """Sum of squared reconstruction errors, with bin means and with bin centres.

    Parameters
    ----------
    bins : ColumnBins
    count, sum_diff, sum_sq_diff : ndarray of shape (n_bins,)
        Per bin: number of finite values, sum and sum of squares of the offsets ``d``
        (:func:`fit_stats_kernel`).

    Returns
    -------
    (sse_mean, sse_centre) : tuple of float
        ``sum (x - mean_b)^2`` and ``sum (x - centre_b)^2`` over all finite values, where
        ``mean_b`` is :func:`bin_means` (what detokenising to means returns).
    """
    n = np.asarray(count, dtype=np.float64)
    s = np.asarray(sum_diff, dtype=np.float64)
    ss = np.asarray(sum_sq_diff, dtype=np.float64)
    unit = bin_units(bins)
    half = np.diff(bins.edges) / unit / 2.0  # the centre's offset: 1/2, or 0 in a zero-width bin
    with np.errstate(divide="ignore", invalid="ignore"):
        # sum (d - s/n)^2 = ss - s^2/n and sum (d - half)^2 = ss - 2 half s + n half^2;
        # rounding can make either a hair negative.
        within = np.where(n > 0, ss - s**2 / n, 0.0)
    around_centre = ss - 2.0 * half * s + n * half**2
    return (
        float((np.maximum(within, 0.0) * unit**2).sum()),
        float((np.maximum(around_centre, 0.0) * unit**2).sum()),
    )


# --------------------------------------------------------------------------- detokenising


def detokenize_values(tokens: pl.Series, bins: ColumnBins, *, value: Literal["mean", "centre"] = "mean") -> pl.Series:
    """Map one column of tokens back to values (see the module docstring).

    Parameters
    ----------
    tokens : polars.Series
        Integer tokens, possibly null.
    bins : ColumnBins
    value : {"mean", "centre"}
        What a bin token becomes.

    Returns
    -------
    polars.Series of Float64, named like ``tokens``
        Null for the null token, for a null token input and for tokens outside the vocabulary.
    """
    n = bins.n_bins
    lookup = np.concatenate([bins.bin_values(value), [np.nan, np.nan, -np.inf, np.inf]])
    t = tokens.cast(pl.Int64).fill_null(-1).to_numpy()
    valid = (t >= 0) & (t < lookup.size)
    out = lookup[np.where(valid, t, 0)]
    return _masked_series(tokens.name, out, ~valid | (t == n + NULL_OFFSET))


def detokenize_kernel(columns: Sequence[ColumnBins], *, value: Literal["mean", "centre"] = "mean") -> Kernel:
    """Kernel: ``_row_id`` + token columns -> ``_row_id`` + one Float64 column per column."""
    columns = list(columns)
    if value not in ("mean", "centre"):
        raise ValueError(f"value must be 'mean' or 'centre', got {value!r}")

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        _check_columns(df, columns)
        out = [df.get_column(ROW_ID)]
        out += [detokenize_values(df.get_column(c.column), c, value=value) for c in columns]
        return pl.DataFrame(out)

    return kernel


def _masked_series(name: str, values: np.ndarray, null: np.ndarray) -> pl.Series:
    """Float64 series with nulls where ``null`` is true (NaN stays NaN)."""
    if not null.any():
        return pl.Series(name, values, dtype=pl.Float64)
    return pl.Series(name, pa.array(values, type=pa.float64(), mask=null))
