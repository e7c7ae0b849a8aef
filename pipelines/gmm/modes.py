"""From a column summary to its fitted modes (kernels: numpy only, no Spark).

:func:`fit_summary` runs EM on a column's summary, handling the degenerate cases;
:func:`build_model` turns the summary and the mixture into a :class:`ColumnModel`:
weight threshold, std floor and CTAB-GAN frequency ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from pipelines.gmm.em import Mixture, fit_mixture, selection_frequencies
from pipelines.gmm.model import ColumnModel, Mode, std_floor
from pipelines.gmm.summary import ColumnSummary

# On a summary an EM iteration costs ~0.5 ms whatever the row count, so both modes run far
# closer to convergence than scikit-learn's defaults (tol=1e-3, max_iter=100), which stop EM
# after 5-10 iterations on multimodal columns.
# MLE: the n_init starts are screened to SCREEN_TOL on the mean log-likelihood per row, then
# the best one runs on to a tight DEFAULT_TOL: near a good optimum EM creeps (components
# sliding along a wide mode), and stopping at 1e-6 left 1M-row fits 1e-5..7e-3 nats/row short
# of where EM ends (benchmarks/RESULTS.md, gmm_fit). Running only the best start on gives
# the same fits as running every start on (to 5e-8 nats/row in the probes), 3-20x sooner.
# (Spark ML stops at 0.01 on the *summed* log-likelihood, 1e-8 a row at 1M rows, after at
# most 100 full passes.)
# Bayesian: scikit-learn's tol on the lower bound, with many iterations: the Dirichlet-process
# fit needs them to empty the components it does not need (RDT #700: with 100 it "almost
# always keeps every component").
DEFAULT_MAX_ITER = {"mle": 5000, "bayesian": 2000}
DEFAULT_TOL = {"mle": 1e-9, "bayesian": 1e-3}
SCREEN_TOL, SCREEN_MAX_ITER = 1e-6, 300
# Starts of the n_init restarts, in turn (see fit_mixture): k-means++, random-from-data, Spark ML's.
INITS = ("kmeans", "random", "sample")


def fit_summary(
    summary: ColumnSummary,
    *,
    max_components: int,
    mode: str,
    seed: int,
    n_init: int = 1,
    max_iter: int | None = None,
) -> Mixture | None:
    """EM on the finite, non-special values of a continuous or mixed column.

    Parameters
    ----------
    summary : ColumnSummary
    max_components : int
        Upper bound on components; a column with fewer distinct values gets fewer.
    mode : {"mle", "bayesian"}
    seed : int
        Initialisation ``i`` of ``n_init`` uses ``seed + i``.
    n_init : int, default=1
        EM runs from different seeds, the starts taken in turn from :data:`INITS` (k-means++,
        random-from-data, Spark ML's sampled Gaussians; :func:`~pipelines.gmm.em.fit_mixture`);
        the best lower bound wins (for MLE after screening, and it then runs on to
        :data:`DEFAULT_TOL`). ``n_init=1`` is the k-means start alone.
    max_iter : int, optional
        Default :data:`DEFAULT_MAX_ITER` of ``mode``.

    Returns
    -------
    Mixture or None
        None for a mixed column whose non-null values are all special values.

    Raises
    ------
    ValueError
        The column has no finite value at all (every row null, NaN or inf).
    """
    if summary.values.size == 0:
        if summary.spec.column_type == "mixed" and sum(summary.special_counts) > 0:
            return None
        raise ValueError(f"no finite values ({summary.n_rows} rows, {summary.n_null} null/NaN/inf)")
    if summary.exact and summary.values.size == 1:
        # a constant: one mode whose std is the documented floor (EM's reg_covar would invent 1e-3)
        value = float(summary.values[0])
        return Mixture(weights=np.ones(1), means=np.array([value]), stds=np.array([std_floor(value)]), converged=True)
    k = min(max_components, summary.distinct_lower_bound, summary.values.size)
    max_iter = max_iter or DEFAULT_MAX_ITER[mode]
    screen = mode == "mle"
    points = (summary.values, summary.counts, summary.variances)
    fits = [
        fit_mixture(
            *points, n_components=k, mode=mode, seed=seed + i, init=INITS[i % len(INITS)],
            max_iter=min(max_iter, SCREEN_MAX_ITER) if screen else max_iter,
            tol=SCREEN_TOL if screen else DEFAULT_TOL[mode],
        )
        for i in range(n_init)
    ]
    best = max(fits, key=lambda f: f.lower_bound)
    left = max_iter - best.n_iter
    if not screen or left <= 0:
        return best
    more = fit_mixture(*points, n_components=k, mode=mode, init=best, max_iter=left, tol=DEFAULT_TOL[mode])
    return replace(more, n_iter=best.n_iter + more.n_iter)


def _ranks(frequency: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Frequency ranks among kept modes (0 = most frequent, ties by component); -1 if dropped."""
    order = [int(i) for i in np.lexsort((np.arange(frequency.size), -frequency)) if kept[i]]
    ranks = np.full(frequency.size, -1)
    ranks[order] = np.arange(len(order))
    return ranks


def build_model(
    summary: ColumnSummary,
    mixture: Mixture | None,
    *,
    weight_threshold: float,
    settings: Mapping[str, Any],
) -> ColumnModel:
    """The :class:`ColumnModel` of a column from its summary and (numeric columns) its mixture.

    Continuous and mixed columns: Gaussians are ordered by mean (their ``component``
    index); those with weight > ``weight_threshold`` are kept (the heaviest is kept if
    none passes); std is floored by :func:`pipelines.gmm.model.std_floor`. ``weight`` is a
    share of the column's non-null rows, so a mixed column's Gaussian weights add up to
    the share of its non-special rows. Listed special values are modes of their own
    (``kind="special"``, kept when they occur). ``frequency`` is the expected share of
    non-null rows selecting each kept mode (:func:`~pipelines.gmm.em.selection_frequencies`
    over the summary), and ``rank`` orders kept modes of all kinds by it.

    Categorical columns: one mode per category (null included), ranked by count, ties by
    value (null last); ``weight`` = ``frequency`` = share of all rows.
    """
    settings = {**settings, "n_rows": summary.n_rows, "n_null": summary.n_null}
    spec = summary.spec
    if spec.column_type == "categorical":
        return _categorical_model(summary, settings)

    n_special = np.asarray(summary.special_counts, dtype=np.float64)
    n_cont = float(summary.counts.sum())
    n_nonnull = n_cont + float(n_special.sum())
    modes: list[dict[str, Any]] = [
        {"kind": "special", "value_double": float(v), "mean": float(v), "weight": c / n_nonnull,
         "frequency": c / n_nonnull, "kept": c > 0}
        for v, c in zip(spec.specials, n_special, strict=True)
    ]
    if mixture is not None:
        order = np.argsort(mixture.means, kind="stable")
        w, m = mixture.weights[order], mixture.means[order]
        s = np.maximum(mixture.stds[order], [std_floor(v) for v in m])
        kept = w > weight_threshold
        if not kept.any():
            kept[np.argmax(w)] = True
        freq = np.zeros(w.size)
        freq[kept] = selection_frequencies(summary.values, summary.counts, w[kept], m[kept], s[kept])
        share = n_cont / n_nonnull
        modes += [
            {"kind": "gaussian", "weight": float(w[j] * share), "mean": float(m[j]), "std": float(s[j]),
             "frequency": float(freq[j] * share) if kept[j] else None, "kept": bool(kept[j])}
            for j in range(w.size)
        ]
    frequency = np.array([md["frequency"] if md["kept"] else -1.0 for md in modes])
    ranks = _ranks(frequency, np.array([md["kept"] for md in modes], dtype=bool))
    out = tuple(
        Mode(component=j, rank=int(ranks[j]) if md["kept"] else None, **md) for j, md in enumerate(modes)
    )
    return ColumnModel(column=spec.column, column_type=spec.column_type, modes=out, settings=settings)


def _categorical_model(summary: ColumnSummary, settings: Mapping[str, Any]) -> ColumnModel:
    n = summary.n_rows
    # by count desc, then value asc with null last: deterministic whatever the row order
    ordered = sorted(summary.categories.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
    modes = tuple(
        Mode(kind="category", component=r, rank=r, kept=True, weight=c / n, value=v, is_null=v is None,
             frequency=c / n)
        for r, (v, c) in enumerate(ordered)
    )
    return ColumnModel(column=summary.spec.column, column_type="categorical", modes=modes, settings=settings)
