"""Drift math as pure numpy: PSI, the exact two-sample KS statistic by bucket refinement, chi-square.

No Spark here. The KS statistic (and the baseline's exact quantiles, the PSI edges) come
from exact counts per bucket of each column's values, refined where the statistic may
lie (see the section "exact KS and quantiles by bucket refinement"): :class:`TaskScan`
is one task's pass over one file, :class:`Refiner` the driver's side. No row is sorted
across tasks or collected; what reaches the driver is bounded per column and pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


# ---------------------------------------------------------------------------- exact KS and quantiles by bucket refinement
#
# The sorted pass above needs a shuffle and a sort of every value. The refinement below
# needs neither: each pass is a scan of the table's files that returns exact counts per
# bucket of a column's values, and the driver bounds the KS statistic from them.
#
# Values are mapped to ``ordered_keys`` (uint64, same order as the doubles, -0.0 == 0.0).
# A bucket ("leaf") is the key range ``[start, start + 2**shift)``. With exact counts per
# leaf, in order, and ``C0, C1`` the cumulative counts at the end of each leaf:
#
# - ``|C0 / n0 - C1 / n1|`` at a leaf's end is ``|F0 - F1|`` at the leaf's largest value,
#   so their maximum is a lower bound ``LB`` of the statistic (scipy's ``max |F0 - F1|``
#   over the data values, CDFs taken at the right of each value);
# - inside a leaf, ``F0 - F1`` lies between ``B0 / n0 - C1 / n1`` and ``C0 / n0 - B1 / n1``
#   (``B`` the counts before the leaf), so a leaf whose bound is <= LB cannot hold the
#   maximum. A leaf of one key is one value: its only point is its end, already in LB.
#
# Leaves that can exceed LB (and the leaves holding the baseline's quantile ranks) are
# *pending*. A pass either collects a pending leaf's distinct values with their counts
# (small leaves exactly; big ones are also *probed*: collected if each task saw at most
# PROBE_DISTINCT distinct values there, which resolves heavy ties at once) or splits it
# into 2**SPLIT_BITS sub-leaves by the next bits of the key. A collected leaf is
# evaluated exactly at each distinct value. Passes repeat until nothing is pending
# (at most 48 / SPLIT_BITS splits deep); what reaches the driver is bounded by
# MAX_SPLIT and MAX_COLLECT_ROWS per column and pass, never the column.

_SIGN = np.uint64(1 << 63)
TOP_SHIFT = 48  # the first pass counts 2**16 leaves: the top 16 bits of the key
SPLIT_BITS = 12
COLLECT_ROWS = 16_384  # a pending leaf with at most this many rows (both samples) is collected
PROBE_DISTINCT = 64  # a bigger one is probed: collected when each task saw at most this many distinct values
MAX_SPLIT = 256  # leaves split per column and pass
MAX_COLLECT_ROWS = 1_000_000  # rows collected per column and pass


def finite_values(x: np.ndarray) -> np.ndarray:
    """The finite values of ``x`` as float64, -0.0 made 0.0 (one value, as in numpy's comparisons)."""
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)] + 0.0


def ordered_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the (finite, -0.0-free) doubles."""
    b = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(b & _SIGN, ~b, b | _SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The doubles of ``ordered_keys`` (its inverse)."""
    k = np.asarray(keys, dtype=np.uint64)
    return np.ascontiguousarray(np.where(k & _SIGN, k ^ _SIGN, ~k)).view(np.float64)


@dataclass(frozen=True)
class Buckets:
    """The key ranges of one column a pass scans: range ``j`` is ``nsub[j]`` sub-leaves of
    ``2**shifts[j]`` keys from ``starts[j]`` (sorted, disjoint), counted; ``mode[j]`` 1: also
    collected (its distinct values and counts), 2: also probed."""

    starts: np.ndarray
    shifts: np.ndarray
    nsub: np.ndarray
    mode: np.ndarray

    @staticmethod
    def top() -> Buckets:
        return Buckets(np.zeros(1, np.uint64), np.full(1, TOP_SHIFT, np.uint64),
                       np.full(1, 1 << (64 - TOP_SHIFT), np.uint64), np.zeros(1, np.int8))

    @property
    def offsets(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.nsub.astype(np.int64))]


class BucketScan:
    """One task's counts (and collected / probed values) of one column over :class:`Buckets`."""

    def __init__(self, buckets: Buckets) -> None:
        self.b = buckets
        self.offsets = buckets.offsets
        self.counts = np.zeros(int(self.offsets[-1]), np.int64)
        self.raw: list[np.ndarray] = []
        self.probe_keys = np.zeros(0, np.uint64)
        self.probe_counts = np.zeros(0, np.int64)
        self.overflow = np.zeros(buckets.starts.size, bool)

    def update(self, values: np.ndarray) -> None:
        """Add finite values (:func:`finite_values`)."""
        b = self.b
        u = ordered_keys(values)
        j = np.searchsorted(b.starts, u, side="right") - 1
        ok = j >= 0
        j = np.where(ok, j, 0)
        sub = (u - b.starts[j]) >> b.shifts[j]  # wraps where not ok; masked out below
        inside = ok & (sub < b.nsub[j])
        u, j, sub = u[inside], j[inside], sub[inside].astype(np.int64)
        self.counts += np.bincount(self.offsets[j] + sub, minlength=self.counts.size)
        mode = b.mode[j]
        if (mode == 1).any():
            self.raw.append(u[mode == 1])
        probe = (mode == 2) & ~self.overflow[j]
        if probe.any():
            pu = u[probe]
            if self.probe_keys.size:  # values seen before (heavy ties: nearly all) only add to their counts
                pos = np.minimum(np.searchsorted(self.probe_keys, pu), self.probe_keys.size - 1)
                hit = self.probe_keys[pos] == pu
                self.probe_counts += np.bincount(pos[hit], minlength=self.probe_keys.size)
                pu = pu[~hit]
            if not pu.size:
                return
            keys, counts = merge_counts([(pu, None), (self.probe_keys, self.probe_counts)])
            leaf = np.searchsorted(b.starts, keys, side="right") - 1
            over = np.bincount(leaf, minlength=b.starts.size) > PROBE_DISTINCT
            self.overflow |= over
            keep = ~over[leaf]
            self.probe_keys, self.probe_counts = keys[keep], counts[keep]

    def result(self) -> dict[str, np.ndarray]:
        keys, counts = merge_counts([(r, None) for r in self.raw])
        leaf = np.searchsorted(self.b.starts, self.probe_keys, side="right") - 1
        return {"counts": self.counts, "keys": keys, "kcounts": counts, "probe_keys": self.probe_keys,
                "probe_counts": self.probe_counts, "probe_leaf": leaf.astype(np.int64), "overflow": self.overflow}


def merge_bucket_results(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two tasks' :meth:`BucketScan.result` as one (the driver folds the tasks in file order).

    A probed leaf whose distinct values over the tasks exceed ``COLLECT_ROWS`` overflows
    here, so what the driver holds stays bounded however many files the table has.
    """
    keys, counts = merge_counts([(a["keys"], a["kcounts"]), (b["keys"], b["kcounts"])])
    overflow = a["overflow"].astype(bool) | b["overflow"].astype(bool)
    pk, pc = merge_counts([(a["probe_keys"], a["probe_counts"]), (b["probe_keys"], b["probe_counts"])])
    leaf = np.zeros(pk.size, np.int64)
    for r in (a, b):
        leaf[np.searchsorted(pk, r["probe_keys"])] = r["probe_leaf"]
    overflow |= np.bincount(leaf, minlength=overflow.size) > COLLECT_ROWS
    keep = ~overflow[leaf]
    return {"counts": a["counts"] + b["counts"], "keys": keys, "kcounts": counts, "probe_keys": pk[keep],
            "probe_counts": pc[keep], "probe_leaf": leaf[keep], "overflow": overflow}


def merge_counts(parts: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted) and their summed counts from ``(keys, counts or None = one each)`` parts."""
    parts = [(k, c) for k, c in parts if k.size]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    keys = np.concatenate([k for k, _ in parts])
    weights = np.concatenate([np.ones(k.size, np.int64) if c is None else c for k, c in parts])
    out, inv = np.unique(keys, return_inverse=True)
    counts = np.zeros(out.size, np.int64)
    np.add.at(counts, inv, weights)
    return out, counts


class Refiner:
    """The driver's side of the refinement for one column (module notes above).

    Parameters
    ----------
    n0, n1 : int
        Finite rows of the baseline and current sample.
    probabilities : sequence of float
        Baseline quantiles wanted exactly (inverted CDF: the smallest value with at
        least ``ceil(p * n0)`` baseline values at or below it, as ``percentile_approx``
        when it is exact and ``numpy.quantile(method="inverted_cdf")``).
    counts0, counts1 : ndarray
        The first pass's counts over :meth:`Buckets.top`.
    """

    def __init__(self, n0: int, n1: int, probabilities: Sequence[float], counts0: np.ndarray, counts1: np.ndarray) -> None:
        self.n0, self.n1 = int(n0), int(n1)
        self.ranks = [max(1, math.ceil(p * self.n0)) for p in probabilities] if self.n0 else []
        idx = np.flatnonzero((counts0 + counts1) > 0)
        self.start = idx.astype(np.uint64) << np.uint64(TOP_SHIFT)
        self.shift = np.full(idx.size, TOP_SHIFT, np.uint64)
        self.c0, self.c1 = counts0[idx].astype(np.int64), counts1[idx].astype(np.int64)
        if (self.c0.sum(), self.c1.sum()) != (self.n0, self.n1):
            raise RuntimeError(f"bucket counts {self.c0.sum()}/{self.c1.sum()}, expected {self.n0}/{self.n1}")
        self.done = self.shift == 0
        self.collected: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.exact_max = 0.0  # max |F0 - F1| inside collected leaves
        self._plan: list[tuple[int, int, int]] | None = None  # (leaf, mode, new shift)

    # ------------------------------------------------------------ bounds

    def _cum(self) -> tuple[np.ndarray, np.ndarray]:
        return np.cumsum(self.c0), np.cumsum(self.c1)

    def lower_bound(self) -> float:
        if not self.n0 or not self.n1 or not self.c0.size:
            return float("nan")
        c0, c1 = self._cum()
        return max(float(np.max(np.abs(c0 / self.n0 - c1 / self.n1))), self.exact_max)

    def pending(self) -> np.ndarray:
        """Leaves that still need a pass, most promising first (quantile leaves first)."""
        c0, c1 = self._cum()
        want = np.zeros(self.c0.size, bool)
        if self.n0 and self.n1:
            b0, b1 = c0 - self.c0, c1 - self.c1
            ub = np.maximum(c0 / self.n0 - b1 / self.n1, c1 / self.n1 - b0 / self.n0)
            want |= ub > self.lower_bound()
        else:
            ub = np.zeros(self.c0.size)
        q = np.zeros(self.c0.size, bool)
        q[np.searchsorted(c0, self.ranks, side="left")] = True
        want = (want | q) & ~self.done
        idx = np.flatnonzero(want)
        return idx[np.lexsort((-ub[idx], ~q[idx]))]

    # ------------------------------------------------------------ passes

    def plan(self) -> Buckets | None:
        """The next pass's ranges for this column, or None when the column is exact."""
        todo = self.pending()
        if not todo.size:
            self._plan = None
            return None
        plan, collected_rows, splits = [], 0, 0
        for i in todo:
            rows = int(self.c0[i] + self.c1[i])
            shift = int(self.shift[i])
            if rows <= COLLECT_ROWS and collected_rows + rows <= MAX_COLLECT_ROWS:
                plan.append((int(i), 1, shift))
                collected_rows += rows
            elif splits < MAX_SPLIT:
                plan.append((int(i), 2, max(shift - SPLIT_BITS, 0)))
                splits += 1
        if not plan:  # budgets full: the first pending leaf is split (progress every pass)
            i = int(todo[0])
            plan.append((i, 2, max(int(self.shift[i]) - SPLIT_BITS, 0)))
        plan.sort()
        self._plan = plan
        return Buckets(
            starts=np.array([self.start[i] for i, _, _ in plan], np.uint64),
            shifts=np.array([s for _, _, s in plan], np.uint64),
            nsub=np.array([1 if m == 1 else 1 << (int(self.shift[i]) - s) for i, m, s in plan], np.uint64),
            mode=np.array([m for _, m, _ in plan], np.int8),
        )

    def apply(self, results0: Sequence[dict], results1: Sequence[dict]) -> None:
        """Fold one pass's :meth:`BucketScan.result` of every task of each sample into the leaves."""
        plan, self._plan = self._plan, None
        assert plan is not None
        offsets = np.r_[0, np.cumsum([1 if m == 1 else 1 << (int(self.shift[i]) - s) for i, m, s in plan])]
        starts = np.array([self.start[i] for i, _, _ in plan], np.uint64)
        counts, keys, over = [], [], np.zeros(len(plan), bool)
        for results in (results0, results1):
            counts.append(sum((r["counts"] for r in results), np.zeros(int(offsets[-1]), np.int64)))
            keys.append((merge_counts([(r["keys"], r["kcounts"]) for r in results]),
                         merge_counts([(r["probe_keys"], r["probe_counts"]) for r in results])))
            for r in results:
                over |= r["overflow"].astype(bool)
        c0, c1 = self._cum()
        new_leaves = []  # (position, start, shift, c0, c1) replacing split leaves
        replace = []
        for p, (i, mode, shift) in enumerate(plan):
            seg = slice(int(offsets[p]), int(offsets[p + 1]))
            if counts[0][seg].sum() != self.c0[i] or counts[1][seg].sum() != self.c1[i]:
                raise RuntimeError("a refinement pass counted other rows than the first pass")
            if mode == 1 or not over[p]:
                per = []
                for s in (0, 1):
                    k, c = keys[s][0] if mode == 1 else keys[s][1]
                    leaf = np.searchsorted(starts, k, side="right") - 1
                    per.append((k[leaf == p], c[leaf == p]))
                self._collect(i, per, c0[i] - self.c0[i], c1[i] - self.c1[i])
            else:
                sub0, sub1 = counts[0][seg], counts[1][seg]
                nz = np.flatnonzero(sub0 + sub1)
                new_leaves.append((self.start[i] + (nz.astype(np.uint64) << np.uint64(shift)),
                                   np.full(nz.size, shift, np.uint64), sub0[nz], sub1[nz]))
                replace.append(i)
        if replace:
            keep = np.ones(self.c0.size, bool)
            keep[replace] = False
            self.start = np.concatenate([self.start[keep], *[n[0] for n in new_leaves]])
            self.shift = np.concatenate([self.shift[keep], *[n[1] for n in new_leaves]])
            self.c0 = np.concatenate([self.c0[keep], *[n[2] for n in new_leaves]])
            self.c1 = np.concatenate([self.c1[keep], *[n[3] for n in new_leaves]])
            done = np.concatenate([self.done[keep], np.concatenate([n[1] for n in new_leaves]) == 0])
            order = np.argsort(self.start, kind="stable")
            self.start, self.shift, self.c0, self.c1, self.done = (
                self.start[order], self.shift[order], self.c0[order], self.c1[order], done[order])

    def _collect(self, i: int, per, before0: int, before1: int) -> None:
        (k0, n0), (k1, n1) = per
        if n0.sum() != self.c0[i] or n1.sum() != self.c1[i]:
            raise RuntimeError("a collected bucket has other rows than counted")
        keys = np.union1d(k0, k1)
        a0, a1 = np.zeros(keys.size, np.int64), np.zeros(keys.size, np.int64)
        a0[np.searchsorted(keys, k0)] = n0
        a1[np.searchsorted(keys, k1)] = n1
        self.collected[int(self.start[i])] = (keys, a0, a1)
        self.done[i] = True
        if self.n0 and self.n1:
            d = (before0 + np.cumsum(a0)) / self.n0 - (before1 + np.cumsum(a1)) / self.n1
            self.exact_max = max(self.exact_max, float(np.max(np.abs(d))))

    # ------------------------------------------------------------ results

    def statistic(self) -> float:
        """The exact KS statistic (once :meth:`plan` returns None); NaN when a sample is empty."""
        return self.lower_bound()

    def quantiles(self) -> list[float]:
        """The baseline's exact quantiles at the probabilities."""
        c0, _ = self._cum()
        out = []
        for r in self.ranks:
            i = int(np.searchsorted(c0, r, side="left"))
            got = self.collected.get(int(self.start[i]))
            if got is None:
                if self.shift[i] != 0:
                    raise RuntimeError("quantile leaf not resolved")
                out.append(float(key_values(self.start[i:i + 1])[0]))
            else:
                keys, a0, _ = got
                j = int(np.searchsorted(c0[i] - self.c0[i] + np.cumsum(a0), r, side="left"))
                out.append(float(key_values(keys[j:j + 1])[0]))
        return out

    def bin_counts(self, inner_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of each sample per PSI bin (:func:`bin_index`); the edges must be values of resolved leaves."""
        c0, c1 = self._cum()
        below = [[], []]
        for e in ordered_keys(np.asarray(inner_edges, np.float64)):
            i = int(np.searchsorted(self.start, e, side="right")) - 1
            got = self.collected.get(int(self.start[i])) if i >= 0 else None
            if i < 0:
                below[0].append(0)
                below[1].append(0)
                continue
            b0, b1 = int(c0[i] - self.c0[i]), int(c1[i] - self.c1[i])
            if got is not None:
                keys, a0, a1 = got
                j = int(np.searchsorted(keys, e, side="left"))
                b0, b1 = b0 + int(a0[:j].sum()), b1 + int(a1[:j].sum())
            elif self.shift[i] != 0:
                raise RuntimeError("PSI edge in an unresolved bucket")
            elif e > self.start[i]:  # past a one-key leaf
                b0, b1 = int(c0[i]), int(c1[i])
            below[0].append(b0)
            below[1].append(b1)
        return (np.diff(np.r_[0, below[0], self.n0]).astype(np.int64),
                np.diff(np.r_[0, below[1], self.n1]).astype(np.int64))


class TaskScan:
    """One task's pass over one sample: per column its :class:`BucketScan` and, in the
    first pass (``profile``), row / null / NaN / +-inf counts, the moments of the finite
    values (count, mean, sum of squared deviations; batches merged as Chan et al.),
    min, max and, where ``mixtures[i]`` is given, the log-likelihood sum."""

    def __init__(self, columns: Sequence[str], buckets: Sequence[Buckets], *, profile: bool,
                 mixtures: Sequence[tuple[Mixture, tuple[float, ...]] | None] = ()) -> None:
        self.columns = list(columns)
        self.scans = [BucketScan(b) for b in buckets]
        self.profile = profile
        self.mixtures = list(mixtures) or [None] * len(self.columns)
        self.rows = 0
        self.stats = np.zeros((len(self.columns), 10))  # null nan inf n mean m2 min max ll lln

    def update(self, frame) -> None:
        """Add a ``polars.DataFrame`` batch holding the columns."""
        import polars as pl

        self.rows += frame.height
        for i, name in enumerate(self.columns):
            s = frame.get_column(name)
            x = s.drop_nulls().cast(pl.Float64).to_numpy()
            v = finite_values(x)
            if self.profile:
                st = self.stats[i]
                nan = int(np.isnan(x).sum())
                st[0] += s.null_count()
                st[1] += nan
                st[2] += x.size - nan - v.size
                if v.size:
                    n, mean = st[3], st[4]
                    m = float(v.mean())
                    m2 = float(np.square(v - m).sum())
                    total = n + v.size
                    delta = m - mean
                    st[4] = mean + delta * v.size / total
                    st[5] += m2 + delta * delta * n * v.size / total
                    st[3] = total
                    st[6] = min(st[6], v.min()) if n else v.min()
                    st[7] = max(st[7], v.max()) if n else v.max()
                    if self.mixtures[i] is not None:
                        mixture, specials = self.mixtures[i]
                        keep = v[~np.isin(v, specials)] if specials else v
                        if keep.size:
                            st[8] += float(log_likelihood(keep, mixture).sum())
                            st[9] += keep.size
            self.scans[i].update(v)

    def result(self) -> dict[str, np.ndarray]:
        out = {"rows": np.array([self.rows], np.int64), "stats": self.stats}
        for i, scan in enumerate(self.scans):
            out.update({f"{i}.{k}": v for k, v in scan.result().items()})
        return out


def merge_task_results(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two :meth:`TaskScan.result` of one sample as one (profiles merged in this order)."""
    if a is None:
        return b
    rows, stats = merge_profiles([a, b])
    out = {"rows": np.array([rows], np.int64), "stats": stats}
    for i in range(stats.shape[0]):
        prefix = f"{i}."
        out.update({prefix + k: v for k, v in merge_bucket_results(
            {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)},
            {k[len(prefix):]: v for k, v in b.items() if k.startswith(prefix)}).items()})
    return out


def merge_profiles(results: Sequence[dict]) -> tuple[int, np.ndarray]:
    """Rows and per-column ``stats`` of :class:`TaskScan` results, merged in their order."""
    rows, acc = 0, None
    for r in results:
        rows += int(r["rows"][0])
        st = r["stats"]
        if acc is None:
            acc = st.copy()
            continue
        for i in range(st.shape[0]):
            a, b = acc[i], st[i]
            n = a[3] + b[3]
            if b[3]:
                delta = b[4] - a[4]
                mean = a[4] + delta * b[3] / n
                m2 = a[5] + b[5] + delta * delta * a[3] * b[3] / n
                lo = min(a[6], b[6]) if a[3] else b[6]
                hi = max(a[7], b[7]) if a[3] else b[7]
                a[4], a[5], a[6], a[7] = mean, m2, lo, hi
            a[3] = n
            a[[0, 1, 2, 8, 9]] += b[[0, 1, 2, 8, 9]]
    return rows, acc
