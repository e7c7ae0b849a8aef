"""Choosing k: each metric's own best k, and a consensus recommendation.

Pure Python/numpy (no Spark). Rules:

- Calinski-Harabasz: the maximum; Davies-Bouldin: the minimum;
- silhouette (either form): the maximum; BIC: the minimum;
- gap: the smallest k with Gap(k) >= Gap(k') - s_k' (k' the next evaluated k);
- elbow: the knee of inertia against k (Kneedle, convex and decreasing).

The consensus is a vote with one vote per method family (CH, DB, silhouette, elbow,
BIC, gap; the exact silhouette speaks for the silhouette family when it was
computed, Spark's otherwise). The k with most votes wins; a tie goes to the k with
the best mean rank over all voting methods, then to the smaller k.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

METHOD_LABELS = {
    "calinski_harabasz": "Calinski-Harabasz (max)",
    "davies_bouldin": "Davies-Bouldin (min)",
    "silhouette_sample": "silhouette, exact Euclidean on the sample (max)",
    "silhouette_spark": "silhouette, Spark squaredEuclidean (max)",
    "elbow": "elbow on inertia (Kneedle)",
    "bic": "GMM BIC (min)",
    "gap": "gap statistic (Tibshirani rule)",
}

_DIRECTION = {"calinski_harabasz": 1, "davies_bouldin": -1, "silhouette_sample": 1, "silhouette_spark": 1, "bic": -1}


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["k"], r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return [k for k, _ in pairs], [v for _, v in pairs]


def best_by_extreme(rows: Sequence[dict[str, Any]], key: str) -> int | None:
    """The k with the best value of ``key`` (max or min by the metric); ties go to the smaller k."""
    ks, vals = _series(rows, key)
    if not ks:
        return None
    sign = _DIRECTION[key]
    best = max(sign * v for v in vals)
    return min(k for k, v in zip(ks, vals, strict=True) if sign * v == best)


def gap_choice(rows: Sequence[dict[str, Any]]) -> tuple[int | None, str]:
    """Smallest k with Gap(k) >= Gap(next k) - s(next k); the note says when none qualifies."""
    pts = sorted((r["k"], r["gap"], r["gap_sk"]) for r in rows if r.get("gap") is not None)
    if not pts:
        return None, ""
    for (k, g, _), (_, g_next, s_next) in zip(pts, pts[1:], strict=False):
        if g >= g_next - s_next:
            return k, ""
    return pts[-1][0], f"no k up to {pts[-1][0]} met the rule; the largest k evaluated is a lower bound"


def elbow_choice(rows: Sequence[dict[str, Any]]) -> int | None:
    """The knee of inertia against k (Kneedle), or None when it finds none (or < 3 points)."""
    from kneed import KneeLocator

    ks, vals = _series(rows, "inertia")
    if len(ks) < 3:
        return None
    with warnings.catch_warnings():
        # kneed warns "No knee/elbow found" and returns None; None is our answer then.
        warnings.simplefilter("ignore")
        knee = KneeLocator(ks, vals, curve="convex", direction="decreasing", S=1.0).knee
    return None if knee is None else int(knee)


def choose(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each method's best k and the consensus recommendation with its explanation.

    Parameters
    ----------
    rows : sequence of dict
        One per evaluated k, with the ``metrics`` table's keys.

    Returns
    -------
    dict
        ``best_k`` (method -> k or None), ``recommended_k``, ``runner_up`` (the next k by
        votes, then mean rank), ``voters``, ``votes`` (k -> methods), ``edge_warning``
        (set when the recommendation is the smallest or largest k evaluated),
        ``explanation`` (text for the report) and ``notes``.
    """
    best: dict[str, int | None] = {m: best_by_extreme(rows, m) for m in _DIRECTION}
    best["elbow"] = elbow_choice(rows)
    best["gap"], gap_note = gap_choice(rows)
    notes = {"gap": gap_note} if gap_note else {}

    sil = "silhouette_sample" if best["silhouette_sample"] is not None else "silhouette_spark"
    voters = [m for m in ("calinski_harabasz", "davies_bouldin", sil, "elbow", "bic", "gap") if best[m] is not None]
    votes: dict[int, list[str]] = {}
    for m in voters:
        votes.setdefault(int(best[m]), []).append(m)  # type: ignore[arg-type]
    if not votes:
        return {"best_k": best, "recommended_k": None, "runner_up": None, "voters": [], "edge_warning": None,
                "votes": {}, "explanation": "no method produced a k", "notes": notes}
    top = max(len(v) for v in votes.values())
    tied = sorted(k for k, v in votes.items() if len(v) == top)
    ranks = _mean_ranks(rows, [m for m in voters if m in _DIRECTION or m == "gap"])
    recommended = min(tied, key=lambda k: (ranks.get(k, float("inf")), k))

    others = [k for k in ranks if k != recommended]
    runner_up = min(others, key=lambda k: (-len(votes.get(k, [])), ranks[k], k)) if others else None

    picks = ", ".join(f"{METHOD_LABELS[m]} → k={best[m]}" for m in voters)
    if len(votes) == 1:
        text = f"All {len(voters)} voting methods agree on k={recommended} ({picks})."
    else:
        text = (
            f"{top} of {len(voters)} methods agree on k={recommended} "
            f"({', '.join(METHOD_LABELS[m] for m in votes[recommended])}); each method family casts one vote "
            f"({picks})."
        )
        if len(tied) > 1:
            text += (
                f" Votes tie between k={', k='.join(map(str, tied))}; the tie goes to the k with the best mean rank "
                f"across the methods' full orderings (mean ranks: "
                + ", ".join(f"k={k}: {ranks.get(k, float('nan')):.2f}" for k in tied)
                + "), then to the smaller k."
            )
        if top * 2 <= len(voters):
            text += " No majority: inspect the metric plots; a weak or absent peak means the data has no clear cluster count."
    if sil == "silhouette_sample" and best["silhouette_spark"] is not None and best["silhouette_spark"] != best[sil]:
        text += (
            f" Spark's squared-Euclidean silhouette picks k={best['silhouette_spark']}; it is a different measure "
            "from the Euclidean silhouette and does not vote."
        )
    all_ks = sorted(r["k"] for r in rows)
    edge = None
    if len(all_ks) > 1 and recommended in (all_ks[0], all_ks[-1]):
        side = "smallest" if recommended == all_ks[0] else "largest"
        edge = (f"the recommended k={recommended} is the {side} k evaluated ({all_ks[0]}..{all_ks[-1]}); "
                "widen the range to check that it is not cut off")
    return {
        "best_k": best,
        "recommended_k": int(recommended),
        "runner_up": runner_up,
        "voters": voters,
        "edge_warning": edge,
        "votes": {str(k): v for k, v in sorted(votes.items())},
        "explanation": text,
        "notes": notes,
    }


def _mean_ranks(rows: Sequence[dict[str, Any]], methods: list[str]) -> dict[int, float]:
    """Mean over ``methods`` of each k's rank (1 = best) in that method's ordering."""
    totals: dict[int, list[float]] = {}
    for m in methods:
        ks, vals = _series(rows, m)
        if not ks:
            continue
        sign = 1 if m == "gap" else _DIRECTION[m]
        order = sorted(zip(ks, vals, strict=True), key=lambda kv: (-sign * kv[1], kv[0]))
        for rank, (k, _) in enumerate(order, 1):
            totals.setdefault(k, []).append(rank)
    return {k: float(np.mean(v)) for k, v in totals.items()}
