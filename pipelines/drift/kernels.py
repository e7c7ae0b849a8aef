"""Drift math as pure numpy: PSI, the exact two-sample KS statistic from sorted runs, chi-square.

No Spark here. The KS statistic is computed in two steps so that Spark can sort the data
once and never bring rows to the driver:

1. :class:`KSPartition` consumes one range partition of ``(value, sample)`` rows sorted by
   value (in batches, ties may straddle batches) and keeps, for the partition, the row
   counts of each sample and the cumulative counts at which
   ``c0 / n0 - c1 / n1`` is largest and smallest, evaluated only at the end of each
   distinct value (where scipy evaluates the empirical CDFs);
2. :func:`ks_merge` orders the partitions by value, adds the counts of the partitions before
   each one, and evaluates ``|F0 - F1|`` exactly at those few candidate points.

Within one partition ``F0 - F1`` is the partition's local ``c0 / n0 - c1 / n1`` plus a
constant (the counts before it), so its extremes are at the local extremes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.gmm.em import Mixture, log_likelihood

PSI_EPSILON = 1e-7  # added to every share, so an empty bin gives a large finite term, not inf


def psi(reference: Sequence[float], current: Sequence[float], *, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index ``sum (cur - ref) * ln(cur / ref)`` over shares.

    Parameters
    ----------
    reference, current : sequence of float
        Counts per bin (or category), same length; turned into shares, then ``epsilon``
        is added to each share.
    epsilon : float
        Added to each share (the common formula's guard against empty bins).

    Returns
    -------
    float
        NaN when either side has no rows.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"reference and current need the same bins, got {ref.shape} and {cur.shape}")
    if ref.sum() <= 0 or cur.sum() <= 0:
        return float("nan")
    r = ref / ref.sum() + epsilon
    c = cur / cur.sum() + epsilon
    return float(np.sum((c - r) * np.log(c / r)))


def bin_index(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """PSI bin of each value: ``(-inf, e1), [e1, e2), ..., [e_last, inf)`` over the inner edges.

    The outer bins are open, so current values beyond the baseline's range still count.
    """
    return np.searchsorted(inner_edges, values, side="right")


def ks_pvalue(statistic: float, n0: int, n1: int) -> float:
    """The asymptotic two-sided p-value, as ``scipy.stats.ks_2samp(..., method='asymp')``."""
    from scipy.stats import kstwo

    if n0 == 0 or n1 == 0 or not np.isfinite(statistic):
        return float("nan")
    en = np.round(n0 * n1 / (n0 + n1))
    return float(np.clip(kstwo.sf(statistic, en), 0.0, 1.0))


def chi_square(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """Pearson's chi-square of the 2 x k table (baseline, current) x categories, and its p-value.

    Categories absent from both sides must not be passed. Equals
    ``scipy.stats.chi2_contingency(table, correction=False)`` for k > 1.
    """
    from scipy.stats import chi2

    table = np.vstack([np.asarray(reference, np.float64), np.asarray(current, np.float64)])
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return statistic, float(chi2.sf(statistic, table.shape[1] - 1))


@dataclass
class KSPartition:
    """Running KS state of one partition of one column (values arrive sorted, in batches).

    ``n0`` / ``n1`` are the column's finite row counts in the baseline / current sample,
    known before the pass (they scale the local CDF difference).
    """

    n0: int
    n1: int
    first: float | None = None
    c0: int = 0
    c1: int = 0
    best_max: tuple[float, int, int] = (-np.inf, 0, 0)
    best_min: tuple[float, int, int] = (np.inf, 0, 0)
    _pending: tuple[float, int, int] | None = field(default=None, repr=False)

    def update(self, values: np.ndarray, current: np.ndarray) -> None:
        """Add a sorted run of values (continuing the previous run); ``current`` is True for the current sample."""
        if values.size == 0:
            return
        if self.first is None:
            self.first = float(values[0])
        cum1 = self.c1 + np.cumsum(current, dtype=np.int64)
        cum0 = self.c0 + np.arange(1, values.size + 1, dtype=np.int64) - (cum1 - self.c1)
        if self._pending is not None and values[0] != self._pending[0]:
            self._consider(np.array([self._pending[1]]), np.array([self._pending[2]]))
        # the end of each distinct value inside this run; the run's last value may continue in the next one
        ends = np.flatnonzero(values[1:] != values[:-1])
        if ends.size:
            self._consider(cum0[ends], cum1[ends])
        self._pending = (float(values[-1]), int(cum0[-1]), int(cum1[-1]))
        self.c0, self.c1 = int(cum0[-1]), int(cum1[-1])

    def close(self) -> None:
        """The partition ended: its last value is complete."""
        if self._pending is not None:
            self._consider(np.array([self._pending[1]]), np.array([self._pending[2]]))
            self._pending = None

    def _consider(self, cum0: np.ndarray, cum1: np.ndarray) -> None:
        d = cum0 / max(self.n0, 1) - cum1 / max(self.n1, 1)
        i, j = int(np.argmax(d)), int(np.argmin(d))
        if d[i] > self.best_max[0]:
            self.best_max = (float(d[i]), int(cum0[i]), int(cum1[i]))
        if d[j] < self.best_min[0]:
            self.best_min = (float(d[j]), int(cum0[j]), int(cum1[j]))


def ks_merge(partitions: Sequence[dict], n0: int, n1: int) -> float:
    """The exact KS statistic from the partitions of one column.

    Parameters
    ----------
    partitions : sequence of dict
        One per non-empty partition: ``first`` (its smallest value), ``c0`` / ``c1`` (its
        row counts per sample), ``max0`` / ``max1`` and ``min0`` / ``min1`` (local cumulative
        counts at the largest and smallest local CDF difference).
    n0, n1 : int
        The finite row counts of the baseline and current sample.

    Returns
    -------
    float
        ``max |F0 - F1|``, equal to ``scipy.stats.ks_2samp(x0, x1).statistic``; NaN when a
        sample is empty.
    """
    if n0 == 0 or n1 == 0:
        return float("nan")
    ordered = sorted(partitions, key=lambda p: p["first"])
    total0 = sum(int(p["c0"]) for p in ordered)
    total1 = sum(int(p["c1"]) for p in ordered)
    if (total0, total1) != (n0, n1):
        raise RuntimeError(f"KS pass saw {total0}/{total1} rows, expected {n0}/{n1}")
    best, o0, o1 = 0.0, 0, 0
    for p in ordered:
        for a, b in ((p["max0"], p["max1"]), (p["min0"], p["min1"])):
            best = max(best, abs((o0 + int(a)) / n0 - (o1 + int(b)) / n1))
        o0, o1 = o0 + int(p["c0"]), o1 + int(p["c1"])
    return best


PARTIAL_DDL = (
    "c int, first double, c0 bigint, c1 bigint, max0 bigint, max1 bigint, min0 bigint, min1 bigint, "
    "bins0 array<bigint>, bins1 array<bigint>, ll0 double, lln0 bigint, ll1 double, lln1 bigint"
)


@dataclass(frozen=True)
class ColumnPlan:
    """What the sorted pass computes for one continuous column, as plain data.

    ``inner_edges``: the PSI bins (:func:`bin_index`). ``mixture`` / ``specials``: the
    fitted mixture whose mean log-likelihood is wanted (rows equal to a special value are
    left out, as in gmm_fit), or None.
    """

    n0: int
    n1: int
    inner_edges: np.ndarray
    mixture: Mixture | None = None
    specials: tuple[float, ...] = ()


def sorted_partition(batches, plans: Sequence[ColumnPlan]):
    """The kernel of the sorted pass over one task's ``(c, p, v, s)`` rows.

    ``c`` indexes ``plans``; ``p`` is the value range (split) of the row, ``v`` a finite
    value, ``s`` True for the current sample. Rows arrive sorted by ``(c, p, v)``; a task
    may hold several splits, each whole. Yields one row per (column, split) present
    (:data:`PARTIAL_DDL`): the KS state (:class:`KSPartition`), the PSI bin counts and the
    log-likelihood sums per sample.
    """
    state: dict[tuple[int, int], list] = {}

    def emit(key: tuple[int, int]) -> pa.RecordBatch:
        ks, bins0, bins1, ll = state.pop(key)
        ks.close()
        return pa.RecordBatch.from_pylist([{
            "c": key[0], "first": ks.first, "c0": ks.c0, "c1": ks.c1,
            "max0": ks.best_max[1], "max1": ks.best_max[2], "min0": ks.best_min[1], "min1": ks.best_min[2],
            "bins0": bins0.tolist(), "bins1": bins1.tolist(),
            "ll0": ll[0], "lln0": ll[1], "ll1": ll[2], "lln1": ll[3],
        }], schema=_PARTIAL_SCHEMA)

    for batch in batches:
        cs = batch.column("c").to_numpy()
        ps = batch.column("p").to_numpy()
        vs = batch.column("v").to_numpy()
        ss = batch.column("s").to_numpy(zero_copy_only=False).astype(bool)
        # rows are sorted by (c, p): split the batch into its runs of one split of one column
        cuts = np.flatnonzero((np.diff(cs) != 0) | (np.diff(ps) != 0)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, cs.size], strict=True):
            key = (int(cs[lo]), int(ps[lo]))
            for done in [k for k in state if k != key]:
                yield emit(done)
            plan = plans[key[0]]
            if key not in state:
                n_bins = plan.inner_edges.size + 1
                state[key] = [KSPartition(plan.n0, plan.n1), np.zeros(n_bins, np.int64),
                              np.zeros(n_bins, np.int64), [0.0, 0, 0.0, 0]]
            ks, bins0, bins1, ll = state[key]
            v, s = vs[lo:hi], ss[lo:hi]
            ks.update(v, s)
            b = bin_index(v, plan.inner_edges)
            bins1 += np.bincount(b[s], minlength=bins1.size)
            bins0 += np.bincount(b[~s], minlength=bins0.size)
            if plan.mixture is not None:
                keep = ~np.isin(v, plan.specials) if plan.specials else np.ones(v.size, bool)
                for side, mask in ((0, keep & ~s), (2, keep & s)):
                    if mask.any():
                        ll[side] += float(log_likelihood(v[mask], plan.mixture).sum())
                        ll[side + 1] += int(mask.sum())
    for key in list(state):
        yield emit(key)


_PARTIAL_SCHEMA = pa.schema([
    ("c", pa.int32()), ("first", pa.float64()), ("c0", pa.int64()), ("c1", pa.int64()),
    ("max0", pa.int64()), ("max1", pa.int64()), ("min0", pa.int64()), ("min1", pa.int64()),
    ("bins0", pa.list_(pa.int64())), ("bins1", pa.list_(pa.int64())),
    ("ll0", pa.float64()), ("lln0", pa.int64()), ("ll1", pa.float64()), ("lln1", pa.int64()),
])
