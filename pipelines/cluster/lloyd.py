"""Batched k-means kernels: every k of the sweep in one pass over the data (numpy, no Spark).

The sweep keeps the centres of all its ks in one :class:`Bank` (the centres of k = 2..10
stacked, 54 rows), so a single pass over a batch of rows serves every k:

- :func:`refine_partial` (a Lloyd step): each row's nearest centre for every k, and per
  (k, cluster) the count, the vector sum and the squared distances. Merged partials give
  the next centres and the inertia of the pass.
- :func:`eval_partial` (the exact evaluation): the same assignment (same centres, so the
  same labels), then per (k, cluster) Σ(x−m), Σ‖x−m‖² and Σ‖x−m‖ about the *label means*
  ``m`` (known from the last Lloyd step), Spark's squared-Euclidean silhouette and,
  optionally, a Gaussian mixture's log-likelihood.

Partials are flat float64 arrays, so a pass merges them by addition. Every row is first
shifted by a *pivot* (a point in the middle of the data), and distances to a label's
centre are taken from the difference vector, so data far from the origin keeps its
digits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class Bank:
    """The centres of several ks stacked: rows ``offsets[i]:offsets[i+1]`` belong to ``ks[i]``."""

    ks: tuple[int, ...]
    centres: np.ndarray  # (sum(ks), d), in pivoted coordinates

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.ks)]).astype(np.int64)

    @property
    def size(self) -> int:
        return int(sum(self.ks))

    def of(self, i: int) -> np.ndarray:
        o = self.offsets
        return self.centres[o[i]:o[i + 1]]

    @classmethod
    def stack(cls, centres: Sequence[np.ndarray]) -> Bank:
        return cls(tuple(int(c.shape[0]) for c in centres), np.vstack(centres).astype(np.float64))


def _scores(xp: np.ndarray, c: np.ndarray) -> np.ndarray:
    """‖c‖² − 2 c·x for every centre (rows) and data row (columns): ‖x − c‖² minus ‖x‖².

    Centre-major: each k's block is a few contiguous rows, reduced along axis 0.
    """
    g = c @ xp.T
    g *= -2.0
    g += np.einsum("ij,ij->i", c, c)[:, None]
    return g


def assign(xp: np.ndarray, bank: Bank) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of each row for every k of ``bank``.

    Parameters
    ----------
    xp : ndarray of shape (n, d)
        Rows minus the pivot.
    bank : Bank

    Returns
    -------
    gidx : ndarray of shape (n, len(bank.ks))
        Row index into ``bank.centres`` of each row's centre, per k (ties: lowest index).
    d2 : ndarray of shape (n, len(bank.ks))
        The squared distance to it (expanded form, clipped at 0).
    """
    g = _scores(xp, bank.centres)
    n, o = xp.shape[0], bank.offsets
    # A running minimum over each k's few centre rows: vector operations along the rows,
    # 2-3x faster than argmin down the short axis; strict < keeps the lowest index on ties.
    gidx = np.empty((len(bank.ks), n), dtype=np.int64)
    d2 = np.empty((len(bank.ks), n))
    less = np.empty(n, dtype=bool)
    for i in range(len(bank.ks)):
        best, arg = d2[i], gidx[i]
        best[:] = g[o[i]]
        arg.fill(o[i])
        for j in range(o[i] + 1, o[i + 1]):
            np.less(g[j], best, out=less)
            np.minimum(g[j], best, out=best)
            arg[less] = j
    d2 += np.einsum("ij,ij->i", xp, xp)[None, :]
    np.maximum(d2, 0.0, out=d2)
    return gidx.T, d2.T


def _group_sums(gidx: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Σ of each data row of ``values`` per centre of ``gidx`` (n, n_ks): every row once per k."""
    flat = gidx.ravel()
    onehot = sparse.csr_matrix(
        (np.ones(flat.size), flat, np.arange(0, flat.size + 1, gidx.shape[1])), shape=(gidx.shape[0], size)
    )
    return np.asarray(onehot.T @ values)


@dataclass(frozen=True)
class RefineLayout:
    """Where each quantity sits in a :func:`refine_partial` array."""

    size: int
    dims: int

    @property
    def length(self) -> int:
        return self.size * (self.dims + 2)

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts (K,), sums about the pivot (K, d), Σ squared distance to the centre (K,))."""
        k, d = self.size, self.dims
        return flat[:k], flat[k:k + k * d].reshape(k, d), flat[k + k * d:]


def refine_partial(x: np.ndarray, *, pivot: np.ndarray, bank: Bank) -> np.ndarray:
    """One Lloyd step's partial over a batch, for every k of ``bank`` (layout :class:`RefineLayout`)."""
    xp = x - pivot
    gidx, d2 = assign(xp, bank)
    counts = np.bincount(gidx.ravel(), minlength=bank.size).astype(np.float64)
    sums = _group_sums(gidx, xp, bank.size)
    sse = np.bincount(gidx.ravel(), weights=d2.ravel(), minlength=bank.size)
    return np.concatenate([counts, sums.ravel(), sse])


@dataclass(frozen=True)
class GmmParams:
    """A fitted full-covariance Gaussian mixture (pivoted means), for the log-likelihood pass."""

    log_weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)
    precisions_cholesky: np.ndarray  # (k, d, d), scikit-learn's precisions_cholesky_


def log_likelihood(xp: np.ndarray, g: GmmParams) -> float:
    """Σ over rows of log p(x) under the mixture (scikit-learn's score × n)."""
    n, d = xp.shape
    logp = np.empty((n, g.means.shape[0]))
    for j, (mu, pc) in enumerate(zip(g.means, g.precisions_cholesky, strict=True)):
        y = (xp - mu) @ pc
        logp[:, j] = -0.5 * (d * math.log(2 * math.pi) + np.einsum("ij,ij->i", y, y)) + np.log(np.diag(pc)).sum()
    logp += g.log_weights
    top = logp.max(axis=1)
    return float((top + np.log(np.exp(logp - top[:, None]).sum(axis=1))).sum())


@dataclass(frozen=True)
class EvalLayout:
    """Where each quantity sits in an :func:`eval_partial` array."""

    size: int
    dims: int
    n_ks: int
    n_gmm: int

    @property
    def length(self) -> int:
        return self.size * (self.dims + 3) + self.n_ks + self.n_gmm

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        k, d = self.size, self.dims
        parts, at = {}, 0
        for name, n in [("counts", k), ("dev", k * d), ("sse", k), ("sum_dist", k),
                        ("silhouette", self.n_ks), ("log_likelihood", self.n_gmm)]:
            parts[name] = flat[at:at + n]
            at += n
        parts["dev"] = parts["dev"].reshape(k, d)
        return parts


def eval_partial(
    x: np.ndarray,
    *,
    pivot: np.ndarray,
    assign_bank: Bank,
    means: np.ndarray,
    within: np.ndarray,
    label_counts: np.ndarray,
    gmm: Sequence[GmmParams] = (),
) -> np.ndarray:
    """The exact-evaluation partial of a batch (layout :class:`EvalLayout`).

    Parameters
    ----------
    x : ndarray of shape (n, d)
    pivot : ndarray of shape (d,)
    assign_bank : Bank
        The centres the labels come from (the last Lloyd step's).
    means : ndarray of shape (K, d)
        The label means (pivoted), one row per centre of ``assign_bank``.
    within : ndarray of shape (K,)
        Σ‖x − m‖² / n of each label: with ``‖x − m_A‖²`` it gives the mean squared distance
        of a row to the rows of A (Spark's silhouette).
    label_counts : ndarray of shape (K,)
        Rows per label.
    gmm : sequence of GmmParams
        Mixtures whose full-data log-likelihood to add up.
    """
    xp = x - pivot
    gidx, _ = assign(xp, assign_bank)
    n, nk = gidx.shape
    size, dims = assign_bank.size, xp.shape[1]
    r = np.arange(n)
    counts = np.bincount(gidx.ravel(), minlength=size).astype(np.float64)
    sse, sum_dist = np.zeros(size), np.zeros(size)
    devsum = np.zeros((size, dims))
    # Spark's squared-Euclidean silhouette: the mean squared distance of x to the rows of
    # cluster A is ‖x − m_A‖² + within_A; for x's own cluster the sum is over the others.
    dist = _scores(xp, means)
    dist += np.einsum("ij,ij->i", xp, xp)[None, :]
    dist += within[:, None]
    sil = np.empty(nk)
    o = assign_bank.offsets
    ones, indptr = np.ones(n), np.arange(n + 1)
    for i in range(nk):
        own = gidx[:, i]
        dev = xp - means.take(own, axis=0)
        sq = np.einsum("ij,ij->i", dev, dev)
        sse += np.bincount(own, weights=sq, minlength=size)
        sum_dist += np.bincount(own, weights=np.sqrt(sq), minlength=size)
        # Σ(x − m) per label: one sparse (labels x rows) product, not a bincount per dimension
        devsum += sparse.csr_matrix((ones, own, indptr), shape=(n, size)).T @ dev
        n_own = label_counts.take(own)
        block = dist[o[i]:o[i + 1]].copy()
        block[own - o[i], r] = np.inf
        b = block.min(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (sq + within.take(own)) * n_own / (n_own - 1)
            s = np.where(a < b, 1.0 - a / b, np.where(a > b, b / a - 1.0, 0.0))
        sil[i] = np.where(n_own > 1, s, 0.0).sum()
    ll = np.array([log_likelihood(xp, g) for g in gmm])
    return np.concatenate([counts, devsum.ravel(), sse, sum_dist, sil, ll])


def labels_for(x: np.ndarray, *, pivot: np.ndarray, bank: Bank) -> np.ndarray:
    """Cluster (0..k-1) of each row for every k of ``bank``: shape (n, len(bank.ks))."""
    gidx, _ = assign(x - pivot, bank)
    return gidx - bank.offsets[:-1][None, :]


def sample_silhouettes(x: np.ndarray, labels: np.ndarray, *, working_memory: int = 64) -> list[float | None]:
    """scikit-learn's exact Euclidean ``silhouette_score`` for several labelings of one sample.

    The pairwise distances are computed once (chunked, as ``silhouette_samples`` does) and
    reduced for every labeling at once, instead of once per k.

    Parameters
    ----------
    x : ndarray of shape (m, d)
    labels : ndarray of shape (m, n_labelings)
        Non-negative integer labels per labeling.
    working_memory : int
        MiB per distance chunk (scikit-learn's ``working_memory``).

    Returns
    -------
    list
        One score per labeling; None where it is undefined (< 2 or = m labels).
    """
    from sklearn.metrics import pairwise_distances_chunked

    m, nl = labels.shape
    widths = labels.max(axis=0) + 1
    offsets = np.concatenate([[0], np.cumsum(widths)])
    onehot = np.zeros((m, int(offsets[-1])))
    for i in range(nl):
        onehot[np.arange(m), offsets[i] + labels[:, i]] = 1.0
    sums = np.empty_like(onehot)
    start = 0
    for chunk in pairwise_distances_chunked(x, metric="euclidean", working_memory=working_memory):
        sums[start:start + chunk.shape[0]] = chunk @ onehot
        start += chunk.shape[0]
    out: list[float | None] = []
    for i in range(nl):
        lab = labels[:, i]
        freq = np.bincount(lab, minlength=int(widths[i])).astype(np.float64)
        if not 1 < np.count_nonzero(freq) < m:
            out.append(None)
            continue
        block = sums[:, offsets[i]:offsets[i + 1]]
        intra = block[np.arange(m), lab]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_other = block / freq[None, :]
            mean_other[np.arange(m), lab] = np.inf
            mean_other[:, freq == 0] = np.inf
            a = intra / (freq[lab] - 1)
            b = mean_other.min(axis=1)
            s = (b - a) / np.maximum(a, b)
        s = np.nan_to_num(np.where(freq[lab] > 1, s, 0.0))
        out.append(float(s.mean()))
    return out


def fit_summary(x: np.ndarray, ks: Sequence[int], *, n_init: int, seed: int) -> dict[int, np.ndarray | None]:
    """Centres for every k from the summary: scikit-learn's k-means++ with ``n_init`` restarts.

    Parameters
    ----------
    x : ndarray of shape (m, d)
        The summary (a seeded sample; its points weigh the same).
    ks : sequence of int
    n_init : int
        Restarts per k; the lowest inertia on the summary wins.
    seed : int

    Returns
    -------
    dict
        k -> centres of shape (k, d), or None for a k above the summary's number of
        distinct points.
    """
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    distinct = np.unique(x, axis=0).shape[0]
    wanted = [k for k in ks if k <= distinct]

    def fit(k: int) -> np.ndarray:
        # one OpenMP thread per fit (a thread's own setting), so each k's result is the
        # single-threaded one whichever worker runs it
        with threadpool_limits(1, user_api="openmp"):
            return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x).cluster_centers_

    # The ks are independent fits: one per driver core (scikit-learn's Lloyd loop releases
    # the GIL). BLAS is held at one thread for the whole pool (its limit is process-wide).
    workers = max(1, min(len(wanted), os.cpu_count() or 1))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers, thread_name_prefix="kmeans-summary") as pool:
        centres = dict(zip(wanted, pool.map(fit, wanted), strict=True))
    return {k: centres.get(k) for k in ks}


@dataclass
class KFit:
    """The outcome of the Lloyd refinement for one k (pivoted coordinates)."""

    k: int
    centres: np.ndarray  # the centres the final labels come from
    counts: np.ndarray  # rows per label
    means: np.ndarray  # label means (a cluster left empty keeps its centre)
    sse: np.ndarray  # Σ‖x − centre‖² per label
    n_iter: int
    converged: bool

    @property
    def within(self) -> np.ndarray:
        """Σ‖x − m‖² / n per label (0 for an empty one), from the sums about the centres."""
        shift = np.einsum("ij,ij->i", self.means - self.centres, self.means - self.centres)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.counts > 0, np.maximum(self.sse / self.counts - shift, 0.0), 0.0)

    @property
    def inertia(self) -> float:
        """Within-cluster sum of squares about the label means."""
        return float((self.within * self.counts).sum())


def refine(
    run_pass,
    init: dict[int, np.ndarray],
    *,
    pivot: np.ndarray,
    tol: float,
    max_passes: int,
    progress=lambda message: None,
) -> dict[int, KFit]:
    """Full-data Lloyd iterations for every k at once, one pass per step.

    Parameters
    ----------
    run_pass : callable
        ``run_pass(kernel, length)``: applies ``kernel(x) -> partial`` (a float64 array of
        ``length``) to every batch of the data and returns the sum of the partials.
    init : dict
        Starting centres per k (input coordinates, not pivoted).
    pivot : ndarray of shape (d,)
    tol : float
        A k stops when its inertia fell by at most ``tol`` (relative) in the last step.
    max_passes : int
        A k still moving after this many steps is reported as not converged.
    progress : callable
        Called with one line per pass.

    Returns
    -------
    dict
        k -> :class:`KFit`.
    """
    centres = {k: np.asarray(c, dtype=np.float64) - pivot for k, c in init.items()}
    previous = dict.fromkeys(centres, math.inf)
    fits: dict[int, KFit] = {}
    active = sorted(centres)
    dims = pivot.shape[0]
    for p in range(1, max_passes + 1):
        bank = Bank.stack([centres[k] for k in active])
        progress(f"pass {p} of at most {max_passes}: Lloyd step for k={','.join(map(str, active))}")
        layout = RefineLayout(bank.size, dims)
        counts, sums, sse = layout.split(run_pass(lambda x, bank=bank: refine_partial(x, pivot=pivot, bank=bank),
                                                  layout.length))
        still = []
        for i, k in enumerate(active):
            s = slice(int(bank.offsets[i]), int(bank.offsets[i + 1]))
            n = counts[s]
            with np.errstate(divide="ignore", invalid="ignore"):
                means = np.where(n[:, None] > 0, sums[s] / n[:, None], centres[k])
            inertia = float(sse[s].sum())
            done = previous[k] - inertia <= tol * inertia
            fits[k] = KFit(k, centres[k], n.astype(np.int64), means, sse[s].copy(), p, bool(done))
            previous[k], centres[k] = inertia, means
            if not done:
                still.append(k)
        active = still
        if not active:
            break
    return fits


@dataclass(frozen=True)
class KEval:
    """The exact evaluation of one k's final labels (pivoted centroids)."""

    labels: np.ndarray  # non-empty cluster indices
    counts: np.ndarray
    centroids: np.ndarray
    sse: np.ndarray
    sum_dist: np.ndarray
    silhouette_spark: float | None
    log_likelihood: float | None


def evaluate(run_pass, fits: Sequence[KFit], *, pivot: np.ndarray, gmm: Sequence[GmmParams] = ()) -> list[KEval]:
    """One pass for every k: exact per-label statistics, Spark's silhouette and GMM log-likelihoods.

    Parameters
    ----------
    run_pass : callable
        As in :func:`refine`.
    fits : sequence of KFit
        The refined ks; their labels are reproduced from ``KFit.centres``.
    pivot : ndarray of shape (d,)
    gmm : sequence of GmmParams
        Empty, or one mixture per fit.

    Returns
    -------
    list of KEval
        One per fit, in order.
    """
    bank = Bank.stack([f.centres for f in fits])
    means = np.vstack([f.means for f in fits])
    within = np.concatenate([f.within for f in fits])
    counts = np.concatenate([f.counts for f in fits]).astype(np.float64)
    layout = EvalLayout(bank.size, pivot.shape[0], len(fits), len(gmm))
    parts = layout.split(run_pass(
        lambda x: eval_partial(x, pivot=pivot, assign_bank=bank, means=means, within=within,
                               label_counts=counts, gmm=gmm),
        layout.length,
    ))
    rows = float(counts[: fits[0].k].sum()) if fits else 0.0
    out = []
    for i, f in enumerate(fits):
        s = slice(int(bank.offsets[i]), int(bank.offsets[i + 1]))
        n = parts["counts"][s]
        keep = n > 0
        # The labels are the refinement's, so Σ(x − m) is rounding only; folding it in
        # gives the exact label means and the sums about them.
        shift = parts["dev"][s][keep] / n[keep, None]
        sse = parts["sse"][s][keep] - n[keep] * np.einsum("ij,ij->i", shift, shift)
        n_labels = int(keep.sum())
        out.append(KEval(
            labels=np.flatnonzero(keep), counts=n[keep].astype(np.int64), centroids=f.means[keep] + shift,
            sse=np.maximum(sse, 0.0), sum_dist=parts["sum_dist"][s][keep],
            silhouette_spark=float(parts["silhouette"][i] / rows) if n_labels > 1 else None,
            log_likelihood=float(parts["log_likelihood"][i]) if gmm else None,
        ))
    return out
