"""From a column summary to its fitted modes (kernels: numpy only, no Spark).

:func:`fit_summary` runs EM on a column's summary, handling the degenerate cases;
:func:`build_model` turns the summary and the mixture into a :class:`ColumnModel`:
likelihood-aware pruning (:func:`prune`), std floor and CTAB-GAN frequency ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipelines.gmm.em import Mixture, density_of, e_step, fit_mixture, selection_frequencies
from pipelines.gmm.model import CLIP, STD_MULTIPLIER, ColumnModel, Mode, std_floor
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
# A Gaussian under the weight threshold is still kept when dropping it costs the column at
# least this much mean log-likelihood per row: a rare far mode (the longest routes of a
# distance column, 0.2 % of rows) costs ~0.5 nats/row when dropped, a redundant one ~1e-6.
PRUNE_TOLERANCE = 1e-3
SELECTIONS = ("bic", "none")
# Coverage (see cover): a value no kept Gaussian represents within CLIP x 4 std is clipped by
# the transform and cannot be inverted. When more than COVERAGE_TOLERANCE of a column's finite
# rows are such values, a Gaussian is added for the stretch of far ones that gains the most
# likelihood, if it holds at least COVERAGE_MIN_ROWS rows (fewer would be a mode that
# memorises single rows) and pays its BIC price, at most COVERAGE_MAX_MODES times. On the flights distance column the 8 flights of the 3,370-mile
# Newark-Anchorage route lie between the 2,499 +- 62 and 4,973 +- 10 modes: 2.4e-5 of the rows.
COVERAGE_TOLERANCE = 1e-5
COVERAGE_MIN_ROWS = 5
COVERAGE_MAX_MODES = 2
# Only values at least this many std from every kept Gaussian seed an added one: nearer
# uncovered values are a Gaussian's own tails (beyond 6 std: 2e-9 of its rows). A coarse
# summary point counts from its near edge (mean - 3 x its within-bin std): an end bin that
# pools a mode's tail with one outlier is not far.
COVERAGE_FAR_Z = 6.0


def value_resolution(summary: ColumnSummary) -> float:
    """The smallest gap between distinct values of an exact summary (0 if unknown).

    An integer-valued or rounded column is exact up to ``bins`` distinct values; there a
    component narrower than this gap is a spike on one repeated value, not a mode.
    """
    if not summary.exact or summary.values.size < 2:
        return 0.0
    return float(np.diff(summary.values).min())


def resolution_variance(summary: ColumnSummary) -> float:
    """The variance floor of a component: a uniform over one resolution step, ``h**2 / 12``.

    A value recorded to resolution ``h`` stands for an interval of width ``h`` (the
    dequantisation view), so no component is narrower than that interval's spread. EM
    adds it as ``reg_covar``; a wider floor (``(h / 2)**2``) merges neighbouring values
    of a 3-valued column into one spread mode.
    """
    return value_resolution(summary) ** 2 / 12.0


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
    reg_covar = max(1e-6, resolution_variance(summary))
    fits = [
        fit_mixture(
            *points, n_components=k, mode=mode, seed=seed + i, init=INITS[i % len(INITS)],
            max_iter=min(max_iter, SCREEN_MAX_ITER) if screen else max_iter,
            tol=SCREEN_TOL if screen else DEFAULT_TOL[mode], reg_covar=reg_covar,
        )
        for i in range(n_init)
    ]
    best = max(fits, key=lambda f: f.lower_bound)
    left = max_iter - best.n_iter
    if not screen or left <= 0:
        return best
    more = fit_mixture(*points, n_components=k, mode=mode, init=best, max_iter=left, tol=DEFAULT_TOL[mode],
                       reg_covar=reg_covar)
    return replace(more, n_iter=best.n_iter + more.n_iter)


def _ranks(frequency: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Frequency ranks among kept modes (0 = most frequent, ties by component); -1 if dropped."""
    order = [int(i) for i in np.lexsort((np.arange(frequency.size), -frequency)) if kept[i]]
    ranks = np.full(frequency.size, -1)
    ranks[order] = np.arange(len(order))
    return ranks


def _mean_log_likelihood(summary: ColumnSummary, w: np.ndarray, m: np.ndarray, s: np.ndarray) -> float:
    """Mean log-likelihood per row of a mixture (weights renormalised) on the summary's points."""
    log_norm, _ = e_step(summary.values, summary.variances, density_of(Mixture(weights=w / w.sum(), means=m, stds=s)))
    return float(summary.counts @ log_norm) / float(summary.counts.sum())


@dataclass(frozen=True)
class Pruning:
    """Which Gaussians :func:`prune` keeps, what dropping each costs, and why.

    Attributes
    ----------
    kept : ndarray of bool
    cost : ndarray of float
        Mean log-likelihood per row the column loses when the component is dropped: at
        the step it was dropped, or (kept) from the final kept set.
    reason : tuple of str or None
        Why a component was dropped, or kept despite a weight under the threshold; None
        for a component kept on its weight.
    """

    kept: np.ndarray
    cost: np.ndarray
    reason: tuple[str | None, ...]


def prune(
    summary: ColumnSummary,
    weights: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    *,
    weight_threshold: float,
    tolerance: float = PRUNE_TOLERANCE,
    selection: str = "bic",
) -> Pruning:
    """Greedy, likelihood-aware pruning of a column's Gaussians, measured on its summary.

    Each step scores dropping every kept component (weights renormalised) by the mean
    log-likelihood per row it costs on the summary, and drops the cheapest component
    that is either under ``weight_threshold`` and costs less than ``tolerance``, or
    (``selection="bic"``) costs less than the BIC's price of its 3 parameters,
    ``1.5 ln(n) / n`` per row: dropping it lowers BIC. It stops when no component
    qualifies; one is always kept. ``tolerance=inf, selection="none"`` is weight-only
    pruning (RDT's rule).

    Parameters
    ----------
    summary : ColumnSummary
    weights, means, stds : ndarray of shape (k,)
    weight_threshold : float
    tolerance : float, default=:data:`PRUNE_TOLERANCE`
        nats per row.
    selection : {"bic", "none"}

    Returns
    -------
    Pruning
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    k = weights.size
    n = float(summary.counts.sum())
    penalty = 1.5 * np.log(n) / n if selection == "bic" and n > 1 else -np.inf
    small = weights <= weight_threshold
    kept = np.ones(k, bool)
    cost = np.full(k, np.nan)
    reason: list[str | None] = [None] * k
    base = _mean_log_likelihood(summary, weights, means, stds)
    while kept.sum() > 1:
        candidates = np.flatnonzero(kept)
        scores = np.array([
            _mean_log_likelihood(summary, weights[rest], means[rest], stds[rest])
            for rest in (kept & (np.arange(k) != j) for j in candidates)
        ])
        cost[candidates] = base - scores
        d = cost[candidates]
        ok = (small[candidates] & (d < tolerance)) | (d < penalty)
        if not ok.any():
            break
        i = np.flatnonzero(ok)[np.argmin(d[ok])]
        j = candidates[i]
        kept[j] = False
        if small[j] and d[i] < tolerance:
            reason[j] = f"dropped: weight {weights[j]:.3g} <= {weight_threshold:g} and costs {d[i]:.3g} nats/row < {tolerance:g}"
        else:
            reason[j] = f"dropped (BIC): costs {d[i]:.3g} nats/row < 1.5 ln(n)/n = {penalty:.3g}"
        base = scores[i]
    for j in np.flatnonzero(kept & small):
        reason[j] = (f"kept: weight {weights[j]:.3g} <= {weight_threshold:g} but dropping it costs "
                     f"{cost[j]:.3g} nats/row >= {tolerance:g}")
    return Pruning(kept=kept, cost=cost, reason=tuple(reason))


@dataclass(frozen=True)
class Coverage:
    """The Gaussians :func:`cover` adds, and the rows left uncovered.

    Attributes
    ----------
    weights, means, stds : ndarray of shape (a,)
        The added Gaussians; ``weights`` are their shares of the final mixture (the kept
        Gaussians share ``1 - weights.sum()``).
    rows : ndarray of shape (a,)
        Rows of the summary each added Gaussian covers.
    uncovered : float
        Rows of the summary no kept or added Gaussian represents.
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    rows: np.ndarray
    uncovered: float


def _uncovered(values: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Summary points no Gaussian represents: ``|x - mu| / (4 sigma) > CLIP`` for every one."""
    z = np.abs(values[:, None] - means[None, :]) / (STD_MULTIPLIER * stds)[None, :]
    return ~(z <= CLIP).any(axis=1)


def _runs(idx: np.ndarray) -> list[np.ndarray]:
    """Maximal runs of consecutive integers in sorted ``idx``."""
    if idx.size == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)


def _candidates(runs: list[np.ndarray], budget: int) -> np.ndarray:
    """(start, stop) summary positions of the sub-runs :func:`cover` scores: every one when
    they fit ``budget``, else those up to a length that fits, plus each whole run."""
    lengths = np.array([r.size for r in runs])
    longest = int(lengths.max())
    while longest > 1 and sum(int(min(L, longest) * (2 * L - min(L, longest) + 1) // 2) for L in lengths) > budget:
        longest //= 2
    out = []
    for r in runs:
        for size in range(1, min(r.size, longest) + 1):
            out += [(r[i], r[i] + size) for i in range(r.size - size + 1)]
        if r.size > longest:
            out.append((r[0], r[-1] + 1))
    return np.array(out, dtype=np.int64)


def cover(
    summary: ColumnSummary,
    weights: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    *,
    tolerance: float = COVERAGE_TOLERANCE,
    min_rows: int = COVERAGE_MIN_ROWS,
    max_modes: int = COVERAGE_MAX_MODES,
) -> Coverage:
    """Gaussians for the values the kept Gaussians leave uncovered, measured on the summary.

    A summary point is uncovered when no Gaussian represents its value within
    ``CLIP x 4 std``: the transform clips such a row and the inverse cannot restore it.
    While the uncovered rows exceed ``tolerance`` of the summary's rows, every stretch of
    consecutive *far* points (value order; at least :data:`COVERAGE_FAR_Z` std from every
    Gaussian, measured from the point's near edge, so not a Gaussian's own tail) with at
    least ``min_rows`` rows is a candidate Gaussian: the stretch's pooled mean and variance
    (within-bin variances included), std floored like any other, weight its share of rows
    (the others scaled to make room). Candidates are scored by a lower bound of their gain
    in log-likelihood (exact on the uncovered points; the covered ones only pay
    ``log(1 - weight)``), every sub-stretch of each run while that fits a budget of
    ~4M point evaluations, else the shorter ones and each whole run. The best is added if
    its exact gain pays its BIC price (3 parameters, ``1.5 ln(n) / n`` per row), at most ``max_modes``
    times; EM does not move it afterwards. So a cluster of far values that the fitted
    components missed (a few routes between two distance modes) gets a mode, while the
    thin tails of a Gaussian, which its own component explains better than a tiny extra
    one would, do not, and neither does a lone outlier (fewer than ``min_rows`` rows).

    Parameters
    ----------
    summary : ColumnSummary
    weights, means, stds : ndarray of shape (k,)
        The kept Gaussians (weights are renormalised).
    tolerance : float, default=:data:`COVERAGE_TOLERANCE`
        Share of the summary's rows that may stay uncovered; 1 adds nothing.
    min_rows : int, default=:data:`COVERAGE_MIN_ROWS`
    max_modes : int, default=:data:`COVERAGE_MAX_MODES`

    Returns
    -------
    Coverage
    """
    x, c, v = summary.values, summary.counts.astype(np.float64), summary.variances
    n = float(c.sum())
    w = np.asarray(weights, np.float64) / np.sum(weights)
    m, s = np.asarray(means, np.float64), np.asarray(stds, np.float64)
    added: list[tuple[float, float, float, float]] = []  # weight, mean, std, rows
    out = _uncovered(x, m, s) if x.size else np.zeros(0, bool)
    if n <= 0:
        return Coverage(*(np.zeros(0),) * 4, uncovered=0.0)
    penalty = 1.5 * np.log(n) / n
    floor = np.sqrt(resolution_variance(summary))
    # prefix sums: pooled moments of any run of points in O(1)
    cs = np.r_[0.0, np.cumsum(c)]
    cx = np.r_[0.0, np.cumsum(c * x)]
    cxx = np.r_[0.0, np.cumsum(c * (v + x * x))]
    while c[out].sum() > tolerance * n and len(added) < max_modes:
        unc = np.flatnonzero(out)
        z = ((np.abs(x[unc][:, None] - m[None, :]) - 3 * np.sqrt(v[unc])[:, None]) / s[None, :]).min(axis=1)
        runs = _runs(unc[z >= COVERAGE_FAR_Z])
        if not runs:
            break
        cand = _candidates(runs, budget=max(1, 4_000_000 // max(1, unc.size)))
        rows = cs[cand[:, 1]] - cs[cand[:, 0]]
        cand, rows = cand[rows >= min_rows], rows[rows >= min_rows]
        if rows.size == 0:
            break
        mu = (cx[cand[:, 1]] - cx[cand[:, 0]]) / rows
        var = np.maximum((cxx[cand[:, 1]] - cxx[cand[:, 0]]) / rows - mu * mu, 0.0)
        sd = np.maximum(np.sqrt(var), np.maximum([std_floor(u) for u in mu], floor))
        wn = rows / n
        # each candidate's gain: exact on the uncovered points, log(1 - wn) on the others
        # (their density under the new Gaussian, far from it, is left out: a lower bound)
        ll, _ = e_step(x[unc], v[unc], density_of(Mixture(weights=w, means=m, stds=s)))
        # each candidate's weighted log density at the uncovered points (e_step's terms, per candidate)
        with np.errstate(divide="ignore"):
            d = density_of(Mixture(weights=wn, means=mu, stds=sd))
        new = d.a[:, None] - 0.5 * d.p[:, None] * ((x[unc][None, :] - d.m[:, None]) ** 2 + v[unc][None, :])
        kept_part = ll[None, :] + np.log1p(-wn)[:, None]
        gain = (c[unc] * (np.logaddexp(kept_part, new) - ll)).sum(axis=1) + (n - c[unc].sum()) * np.log1p(-wn)
        best = int(np.argmax(gain))  # first of equals: deterministic
        w2 = np.r_[w * (1.0 - wn[best]), wn[best]]
        m2, s2 = np.r_[m, mu[best]], np.r_[s, sd[best]]
        exact = _mean_log_likelihood(summary, w2, m2, s2) - _mean_log_likelihood(summary, w, m, s)
        if not exact > penalty:
            break
        added.append((float(wn[best]), float(mu[best]), float(sd[best]), float(rows[best])))
        w, m, s = w2, m2, s2
        out = _uncovered(x, m, s)
    cols = [np.array(col) for col in zip(*added, strict=True)] if added else [np.zeros(0)] * 4
    # each added weight as a share of the final mixture: later additions scaled it down
    shares = w[len(w) - len(added):] if added else np.zeros(0)
    return Coverage(weights=shares, means=cols[1], stds=cols[2], rows=cols[3], uncovered=float(c[out].sum()))


def build_model(
    summary: ColumnSummary,
    mixture: Mixture | None,
    *,
    weight_threshold: float,
    settings: Mapping[str, Any],
    prune_tolerance: float = PRUNE_TOLERANCE,
    selection: str = "bic",
    coverage_tolerance: float = COVERAGE_TOLERANCE,
    coverage_min_rows: int = COVERAGE_MIN_ROWS,
) -> ColumnModel:
    """The :class:`ColumnModel` of a column from its summary and (numeric columns) its mixture.

    Continuous and mixed columns: Gaussians are ordered by mean (their ``component``
    index) and pruned by :func:`prune` (``weight_threshold`` first, then the likelihood
    each costs; ``drop_cost`` and ``reason`` record the decision); std is floored by
    :func:`pipelines.gmm.model.std_floor` and by :func:`resolution_variance`. Then
    :func:`cover` may add Gaussians for stretches of far values the kept ones leave
    uncovered (``coverage_tolerance``, ``coverage_min_rows``; ``reason`` starts with
    ``added``), the other weights scaled to make room.
    ``weight`` is a share of the column's non-null rows, so a mixed column's Gaussian
    weights add up to the share of its non-special rows. Listed special values are
    modes of their own (``kind="special"``, kept when they occur). ``frequency`` is the
    expected share of non-null rows selecting each kept mode
    (:func:`~pipelines.gmm.em.selection_frequencies` over the summary), and ``rank``
    orders kept modes of all kinds by it.

    Categorical columns: one mode per category (null included), ranked by count, ties by
    value (null last); ``weight`` = ``frequency`` = share of all rows.
    """
    settings = {**settings, "n_rows": summary.n_rows, "n_null": summary.n_null, "weight_threshold": weight_threshold,
                "prune_tolerance": prune_tolerance}
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
        floor = np.sqrt(resolution_variance(summary))
        s = np.maximum(mixture.stds[order], [max(std_floor(v), floor) for v in m])
        pruning = prune(summary, w, m, s, weight_threshold=weight_threshold, tolerance=prune_tolerance,
                        selection=selection)
        kept = pruning.kept
        cost, reason = pruning.cost, list(pruning.reason)
        cov = cover(summary, w[kept], m[kept], s[kept], tolerance=coverage_tolerance, min_rows=coverage_min_rows)
        settings["uncovered_rows"] = cov.uncovered
        if cov.weights.size:
            # the kept Gaussians' ratios to each other stay, and to the added ones as cover() scored them
            k_sum = float(w[kept].sum())
            w = np.concatenate([w * (1.0 - cov.weights.sum()), cov.weights * k_sum])
            m, s = np.concatenate([m, cov.means]), np.concatenate([s, cov.stds])
            kept = np.concatenate([kept, np.ones(cov.weights.size, bool)])
            full = _mean_log_likelihood(summary, w[kept], m[kept], s[kept])
            without = [kept & (np.arange(w.size) != j) for j in range(w.size - cov.weights.size, w.size)]
            added = [full - _mean_log_likelihood(summary, w[r], m[r], s[r]) for r in without]
            cost = np.concatenate([cost, added])
            reason += [f"added: {int(r)} rows ({r / n_cont:.2g}) no kept Gaussian represents within "
                       f"{CLIP:g} x {STD_MULTIPLIER:g} std; dropping it costs {d:.3g} nats/row"
                       for r, d in zip(cov.rows, added, strict=True)]
            order = np.argsort(m, kind="stable")
            w, m, s, kept, cost = w[order], m[order], s[order], kept[order], cost[order]
            reason = [reason[j] for j in order]
        freq = np.zeros(w.size)
        freq[kept] = selection_frequencies(summary.values, summary.counts, w[kept], m[kept], s[kept])
        share = n_cont / n_nonnull
        modes += [
            {"kind": "gaussian", "weight": float(w[j] * share), "mean": float(m[j]), "std": float(s[j]),
             "frequency": float(freq[j] * share) if kept[j] else None, "kept": bool(kept[j]),
             "drop_cost": None if np.isnan(cost[j]) else float(cost[j]), "reason": reason[j]}
            for j in range(w.size)
        ]
    frequency = np.array([md["frequency"] if md["kept"] else -1.0 for md in modes])
    ranks = _ranks(frequency, np.array([md["kept"] for md in modes], dtype=bool))
    out = tuple(
        Mode(component=j, rank=int(ranks[j]) if md["kept"] else None, **md) for j, md in enumerate(modes)
    )
    return ColumnModel(column=spec.column, column_type=spec.column_type, modes=out, settings=settings)


def pruning_report(model: ColumnModel) -> dict[str, Any]:
    """The run summary's account of a column's modes: counts, and every pruning decision with its reason.

    ``n_modes_weight_only`` is what weight-only pruning (RDT's rule) would have kept.
    """
    gauss = [m for m in model.modes if m.kind == "gaussian"]
    threshold = model.settings.get("weight_threshold") or 0.0
    # weights here are shares of non-null rows; the threshold applies to shares of the Gaussian part
    share = sum(m.weight for m in gauss) or 1.0
    added = sum(bool(m.reason and m.reason.startswith("added")) for m in gauss)
    weight_only = sum(m.weight / share > threshold for m in gauss) or min(1, len(gauss))
    decided = [
        {"component": m.component, "mean": m.mean, "weight": m.weight, "kept": m.kept, "drop_cost": m.drop_cost,
         "reason": m.reason}
        for m in gauss if m.reason
    ]
    return {"n_modes": model.n_modes, "n_gaussians_fitted": len(gauss) - added,
            "n_gaussians_kept": sum(m.kept for m in gauss), "n_gaussians_added": added,
            "n_gaussians_weight_only": weight_only, "uncovered_rows": model.settings.get("uncovered_rows"),
            "pruning": decided}


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
