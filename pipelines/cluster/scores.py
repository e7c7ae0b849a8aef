"""Calinski-Harabasz and Davies-Bouldin from per-cluster sufficient statistics.

Pure numpy, no Spark: the per-batch kernels of the two distributed passes and the
driver-side formulas. The formulas are scikit-learn's
(``sklearn/metrics/cluster/_unsupervised.py``), rewritten on per-cluster sums so
that the data is read twice and never collected:

- pass 1 (:func:`batch_means`, merged with :func:`merge_means`): count and mean per label;
- pass 2 (:func:`batch_deviations`): Σ‖x−c‖² and Σ‖x−c‖ per label.

Numerical care, because data far from the origin is common (timestamps, money):

- Means are accumulated as deviations from a reference row of the same label, so a
  shift of 1e6 never reaches the running sums (no Σx² − n·c² cancellation anywhere).
- Partial means are merged with Chan's pairwise update, not by adding raw sums.
- Centroid distances are ``‖a − b‖`` computed from the difference, not scikit-learn's
  expanded ``‖a‖² + ‖b‖² − 2a·b``, which loses every digit at a shift of 1e6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# scikit-learn's "is zero" test in davies_bouldin_score (xpx.isclose(x, 0): |x| <= atol).
_DB_ZERO_ATOL = 1e-8


def check_number_of_labels(n_labels: int, n_samples: int) -> None:
    """Raise scikit-learn's ValueError unless ``1 < n_labels < n_samples``.

    Parameters
    ----------
    n_labels : int
        Number of distinct labels.
    n_samples : int
        Number of samples.
    """
    if not 1 < n_labels < n_samples:
        raise ValueError(
            f"Number of labels is {n_labels}. Valid values are 2 to n_samples - 1 (inclusive)"
            f" (n_samples={n_samples})"
        )


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster sufficient statistics of a labelled data set.

    Attributes
    ----------
    labels : ndarray of shape (n_labels,)
        The distinct label values, sorted (any integers, not necessarily 0..k-1).
    counts : ndarray of shape (n_labels,)
        Points per label.
    centroids : ndarray of shape (n_labels, n_features)
        Mean of each label's points.
    sse : ndarray of shape (n_labels,)
        Σ‖x − c‖² over each label's points.
    sum_dist : ndarray of shape (n_labels,)
        Σ‖x − c‖ over each label's points.
    """

    labels: np.ndarray
    counts: np.ndarray
    centroids: np.ndarray
    sse: np.ndarray
    sum_dist: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.counts.sum())

    @property
    def n_labels(self) -> int:
        return int(self.labels.shape[0])

    @property
    def inertia(self) -> float:
        """Within-cluster sum of squares to the label means."""
        return float(self.sse.sum())


def batch_means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count and mean per label of one batch (pass 1 kernel).

    Parameters
    ----------
    x : ndarray of shape (n, d)
    labels : ndarray of shape (n,), integer

    Returns
    -------
    uniq : ndarray of shape (g,)
        Sorted distinct labels of the batch.
    counts : ndarray of shape (g,)
    means : ndarray of shape (g, d)
    """
    uniq, first, inv, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    # Sum deviations from each label's first row: the sums stay at the data's spread,
    # not its offset from the origin.
    ref = x[first]
    dev = x - ref[inv]
    sums = np.empty_like(ref)
    for j in range(x.shape[1]):
        sums[:, j] = np.bincount(inv, weights=dev[:, j], minlength=uniq.shape[0])
    return uniq, counts.astype(np.int64), ref + sums / counts[:, None]


def merge_means(
    n_a: np.ndarray, mean_a: np.ndarray, n_b: np.ndarray, mean_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Chan's pairwise merge of two (count, mean) summaries of the same labels."""
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
    return n, mean_a + (mean_b - mean_a) * w[..., None]


def batch_deviations(x: np.ndarray, idx: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ‖x−c‖² and Σ‖x−c‖ per label of one batch (pass 2 kernel).

    Parameters
    ----------
    x : ndarray of shape (n, d)
    idx : ndarray of shape (n,)
        Row index into ``centroids`` of each point's label.
    centroids : ndarray of shape (k, d)

    Returns
    -------
    sse, sum_dist : ndarrays of shape (k,)
    """
    dev = x - centroids[idx]
    sq = np.einsum("ij,ij->i", dev, dev)
    k = centroids.shape[0]
    return np.bincount(idx, weights=sq, minlength=k), np.bincount(idx, weights=np.sqrt(sq), minlength=k)


def centroid_distances(centroids: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances from differences (stable far from the origin)."""
    diff = centroids[:, None, :] - centroids[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


def overall_mean(stats: ClusterStats) -> np.ndarray:
    """The data mean from the label means, weighted, relative to the first centroid."""
    ref = stats.centroids[0]
    return ref + (stats.counts[:, None] * (stats.centroids - ref)).sum(axis=0) / stats.n_samples


def calinski_harabasz_from_stats(stats: ClusterStats) -> float:
    """scikit-learn's Calinski-Harabasz score from :class:`ClusterStats`.

    Raises
    ------
    ValueError
        Unless ``1 < n_labels < n_samples`` (scikit-learn's condition).
    """
    n, k = stats.n_samples, stats.n_labels
    check_number_of_labels(k, n)
    diff = stats.centroids - overall_mean(stats)
    extra_disp = float((stats.counts * np.einsum("ij,ij->i", diff, diff)).sum())
    intra_disp = float(stats.sse.sum())
    # scikit-learn: all points on their centroids scores 1.0 rather than dividing by zero.
    if intra_disp == 0.0:
        return 1.0
    return float(extra_disp * (n - k) / (intra_disp * (k - 1.0)))


def davies_bouldin_from_stats(stats: ClusterStats) -> float:
    """scikit-learn's Davies-Bouldin score from :class:`ClusterStats`.

    Raises
    ------
    ValueError
        Unless ``1 < n_labels < n_samples`` (scikit-learn's condition).
    """
    check_number_of_labels(stats.n_labels, stats.n_samples)
    intra = stats.sum_dist / stats.counts
    dist = centroid_distances(stats.centroids)
    # scikit-learn returns 0 when every cluster is a point or every centroid coincides
    # (its isclose(., 0) test, absolute tolerance 1e-8).
    if np.all(np.abs(intra) <= _DB_ZERO_ATOL) or np.all(np.abs(dist) <= _DB_ZERO_ATOL):
        return 0.0
    # Coincident centroids are not compared with each other (a zero distance becomes inf).
    dist[dist == 0] = np.inf
    combined = intra[:, None] + intra[None, :]
    return float(np.mean(np.max(combined / dist, axis=1)))


def stats_from_arrays(x: np.ndarray, labels: np.ndarray) -> ClusterStats:
    """:class:`ClusterStats` of in-memory data with the same kernels as the Spark passes.

    Used for bounded samples (the gap statistic's sampled data) and for tests.
    """
    uniq, counts, means = batch_means(x, labels)
    idx = np.searchsorted(uniq, labels)
    sse, sum_dist = batch_deviations(x, idx, means)
    return ClusterStats(uniq, counts, means, sse, sum_dist)
