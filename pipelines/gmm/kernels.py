"""Per-partition GMM transform and inverse kernels (pure numpy/Polars, no Spark).

The math is CTGAN's / RDT's ``ClusterBasedNormalizer``, vectorised:

- responsibilities of the Gaussian modes, in log space (:func:`responsibilities`);
- the mode is *sampled* from ``p + 1e-6`` renormalised, by inverse CDF with one
  uniform per row (:func:`sample_components`), the same rule as ``np.random.choice``;
- the normalised value is ``(x - mu) / (4 sigma)`` clipped to ``[-0.99, 0.99]``;
- the inverse clips ``z`` to ``[-1, 1]`` and rounds and clips the rank, as RDT does,
  then returns ``z * 4 sigma + mu`` (rounded back to an integer for an integer column).

Sampling (``sampling=``):

- ``"tail-safe"`` (default): ``p`` is the posterior of the *kept* mixture; a row whose
  sampled mode would clip it is sampled again from the renormalised responsibilities of
  the kept modes that do not clip it (:func:`resample_unclipped`), with a second keyed
  uniform; a value no kept mode can represent goes to its most responsible mode and is
  the only kind of row clipped. Per column, the rows re-sampled and clipped are counted.
- ``"rdt"``: RDT's ``ClusterBasedNormalizer`` exactly: ``p`` over every fitted Gaussian
  (dropped ones too), then the kept columns, and no second draw.

The uniforms come from a counter-based generator keyed by ``(seed, column, _row_id)``
(:func:`uniforms`), so a row's result depends on nothing but the row, the fit and the
seed: not on partitioning, partition order or engine.

Every kernel takes a :class:`polars.DataFrame` plus :class:`ColumnPlan` objects (plain
arrays built once from the fit's :class:`~pipelines.gmm.model.ColumnModel`) and returns a
:class:`polars.DataFrame` of the same rows. Besides the outputs, :func:`encode` and
:func:`decode` emit per-row flag columns (``__<stat>__<column>``) that the stage
aggregates (:func:`encode_stats`, :func:`decode_stats`) and then drops.

Layouts of the model-ready (``transformed_values``) frame, per fitted column ``c``:

========================  ========================================  =====================================
kind                      ``wide``                                  ``onehot``
========================  ========================================  =====================================
continuous / mixed        ``c`` (z), ``c__component`` (rank),       ``c`` (z), ``c__0 .. c__{m-1}``,
                          ``c__null`` (1.0 = null/NaN/inf)          ``c__null``
categorical               ``c__component`` (rank; m = unknown)      ``c__0 .. c__{m-1}``, ``c__unknown``
========================  ========================================  =====================================

A null row of a continuous or mixed column has ``c = 0``, rank 0 (an all-zero one-hot
block) and ``c__null = 1``; the model-ready frame has no nulls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from pipelines.columns import ROW_ID
from pipelines.gmm.model import CLIP, STD_MULTIPLIER, ColumnModel

INVERSE_CLIP = 1.0  # RDT clips generated z to [-1, 1] before inverting
PROB_EPS = 1e-6  # CTGAN/RDT add this to every kept mode's probability before sampling

Layout = Literal["wide", "onehot"]
LAYOUTS: tuple[Layout, ...] = ("wide", "onehot")
Sampling = Literal["tail-safe", "rdt"]
SAMPLINGS: tuple[Sampling, ...] = ("tail-safe", "rdt")
# Spark SQL integer types -> the inverse's output dtype; any other numeric type comes back as Float64
INTEGER_TYPES: dict[str, pl.DataType] = {"tinyint": pl.Int8(), "smallint": pl.Int16(), "int": pl.Int32(),
                                         "bigint": pl.Int64()}

# SplitMix64 constants (Steele, Lea & Flood 2014; Vigna's splitmix64.c).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# --------------------------------------------------------------------------- random numbers


def stream_key(seed: int, column: str, draw: int = 0) -> int:
    """The 64-bit key of the uniform stream of ``(seed, column)`` (and ``draw``).

    The first 8 bytes (little-endian) of BLAKE2b over ``"<seed>\\0<column>"`` in UTF-8
    (``"<seed>\\0<column>\\0<draw>"`` for a later draw, e.g. the tail-safe re-sample):
    stable across processes and platforms (unlike Python's ``hash``), and different
    columns and draws get unrelated streams.
    """
    data = str(int(seed)).encode("ascii") + b"\x00" + column.encode("utf-8")
    if draw:
        data += b"\x00" + str(int(draw)).encode("ascii")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def uniforms(row_ids: np.ndarray, *, seed: int, column: str, draw: int = 0) -> np.ndarray:
    """Counter-based uniforms in ``[0, 1)``, one per row id.

    ``u = (splitmix64_mix(key + row_id * gamma) >> 11) * 2**-53`` where ``key`` is
    :func:`stream_key` and ``gamma`` the golden-ratio increment: the ``row_id``-th output
    of a SplitMix64 generator started at ``key``, computed directly from the counter (no
    state), in wrapping uint64 arithmetic. SplitMix64 passes BigCrush; two streams
    overlap only if their keys differ by a multiple of ``gamma`` within the row range,
    which for hashed keys has probability about ``n_rows / 2**64``.

    Parameters
    ----------
    row_ids : ndarray of int64 of shape (n_rows,)
    seed : int
    column : str
    draw : int, default=0
        Which of the row's draws (0: the mode sample; 1: the tail-safe re-sample).

    Returns
    -------
    ndarray of float64 of shape (n_rows,)
    """
    key = np.uint64(stream_key(seed, column, draw))
    counter = np.ascontiguousarray(row_ids, dtype=np.int64).view(np.uint64)
    z = counter * _GAMMA + key  # uint64 arrays wrap modulo 2**64, as SplitMix64 needs
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# --------------------------------------------------------------------------- the math


# Both functions work on component-major (n_components, n_rows) arrays internally:
# reductions over a few components then run as whole-row vector operations, several
# times faster than reducing the short last axis of (n_rows, n_components).


def _log_joint(x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """``log w_j - log s_j - ((x - m_j) / s_j)**2 / 2`` as a (n_components, n_rows) array."""
    with np.errstate(over="ignore"):  # |x - mean| / std beyond float range: inf, clipped next
        log_p = (x[None, :] - means[:, None]) * (1.0 / stds)[:, None]
    # |d| > 1e150 would overflow d*d to inf and give -inf - -inf = nan below; the clip
    # keeps the order of the log-likelihoods for any representable x.
    np.clip(log_p, -1e150, 1e150, out=log_p)
    np.square(log_p, out=log_p)
    log_p *= -0.5
    log_p += (np.log(weights) - np.log(stds))[:, None]
    return log_p


def _posterior(x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Responsibilities as a (n_components, n_rows) array (see :func:`responsibilities`)."""
    log_p = _log_joint(x, weights, means, stds)
    log_p -= log_p.max(axis=0)
    p = np.exp(log_p, out=log_p)
    p /= p.sum(axis=0)
    return p


def responsibilities(x: np.ndarray, *, weights: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Posterior probabilities of 1-D Gaussian mixture components (``predict_proba``).

    Computed in log space with the row maximum subtracted before ``exp``, so a value
    far outside every component still gets a valid distribution (the widest
    component wins) instead of ``0/0``.

    Parameters
    ----------
    x : ndarray of shape (n_rows,)
        Finite values.
    weights, means, stds : ndarray of shape (n_components,)
        Mixture weights (positive; need not sum to 1), means, standard deviations (> 0).

    Returns
    -------
    ndarray of shape (n_rows, n_components)
        Rows sum to 1.
    """
    return _posterior(x, weights, means, stds).T


def _sample(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """:func:`sample_components` on a (n_components, n_rows) array."""
    # cdf_k = cumsum_k(p + eps) / total <= u  <=>  cumsum_k(p + eps) <= u * total
    threshold = u * (p.sum(axis=0) + PROB_EPS * len(p))
    running = np.zeros(p.shape[1])
    index = np.zeros(p.shape[1], np.int64)
    for k in range(len(p) - 1):
        running += p[k]
        running += PROB_EPS
        index += running <= threshold
    return index


def sample_components(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample one component per row from ``probs + 1e-6``, renormalised (CTGAN/RDT).

    Inverse CDF with one uniform per row: the index is the number of CDF entries
    ``<= u``, ``np.random.choice``'s rule (``cdf.searchsorted(u, side="right")``).

    Parameters
    ----------
    probs : ndarray of shape (n_rows, n_components)
    u : ndarray of shape (n_rows,), values in [0, 1)

    Returns
    -------
    ndarray of int64 of shape (n_rows,)
    """
    return _sample(np.ascontiguousarray(probs.T), u)


def resample_unclipped(
    x: np.ndarray, u: np.ndarray, *, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tail-safe re-sample: one component per row among those that represent it unclipped.

    A component represents ``x`` when ``|x - mu| / (4 sigma) <= 0.99``. Each row samples
    (inverse CDF, one uniform) from its responsibilities restricted to those components
    and renormalised (in log space, so a far value still gets a valid distribution); a
    row no component represents gets its most responsible component.

    Parameters
    ----------
    x : ndarray of shape (n_rows,)
        Finite values.
    u : ndarray of shape (n_rows,), values in [0, 1)
    weights, means, stds : ndarray of shape (n_components,)

    Returns
    -------
    choice : ndarray of int64 of shape (n_rows,)
    represented : ndarray of bool of shape (n_rows,)
        False where no component represents the row (it will be clipped).
    """
    log_p = _log_joint(x, weights, means, stds)
    with np.errstate(over="ignore", invalid="ignore"):
        fits = np.abs((x[None, :] - means[:, None]) / (STD_MULTIPLIER * stds)[:, None]) <= CLIP
    represented = fits.any(axis=0)
    most = log_p.argmax(axis=0)
    log_p[~fits] = -np.inf
    log_p[:, ~represented] = 0.0  # no component fits: any finite values, the row takes `most`
    log_p -= log_p.max(axis=0)
    p = np.exp(log_p)
    p /= p.sum(axis=0)
    cdf = np.cumsum(p, axis=0)
    # the count of CDF entries <= u (np.random.choice's rule); never past the last fitting component
    choice = np.minimum((cdf[:-1] <= u).sum(axis=0), len(weights) - 1 - np.argmax(fits[::-1], axis=0))
    return np.where(represented, choice, most).astype(np.int64), represented


# --------------------------------------------------------------------------- fitted plans


@dataclass(frozen=True)
class ColumnPlan:
    """A column's fit as arrays, ready for the kernels (picklable, no Spark types).

    Attributes
    ----------
    column, column_type : str
    n_modes : int
        Kept modes ``m``; ranks are ``0 .. m-1``. A categorical column's unknown rank is ``m``.
    post_weights, post_means, post_stds : ndarray
        Every Gaussian component with parameters, kept or dropped: RDT computes
        ``predict_proba`` over all components and then keeps the valid columns.
    post_kept : ndarray of int
        Positions in the ``post_*`` arrays of the kept Gaussians, in rank order.
    kept_ranks, kept_weights, kept_means, kept_stds : ndarray
        Rank, weight, mean and std of those kept Gaussians.
    special_values, special_ranks : ndarray
        Modal values of a mixed column and their ranks.
    rank_mean, rank_std, rank_special : ndarray of shape (m,)
        Per rank, for the inverse: the Gaussian's mean/std (NaN for a special value) and
        the special value (NaN for a Gaussian).
    categories : tuple
        Per rank, the category string (``None`` for the null category).
    null_rank : int or None
        Rank of the null category of a categorical column.
    dtype : polars.DataType
        The inverse's output type: the input's integer type (Spark ``tinyint`` ..
        ``bigint``, recorded by the fit as ``source_type``), else Float64.
    """

    column: str
    column_type: str
    n_modes: int
    post_weights: np.ndarray
    post_means: np.ndarray
    post_stds: np.ndarray
    post_kept: np.ndarray
    kept_ranks: np.ndarray
    kept_weights: np.ndarray
    kept_means: np.ndarray
    kept_stds: np.ndarray
    special_values: np.ndarray
    special_ranks: np.ndarray
    rank_mean: np.ndarray
    rank_std: np.ndarray
    rank_special: np.ndarray
    categories: tuple[str | None, ...]
    null_rank: int | None
    dtype: pl.DataType = pl.Float64()

    @property
    def is_categorical(self) -> bool:
        return self.column_type == "categorical"

    @property
    def unknown_rank(self) -> int:
        return self.n_modes


def _finite_positive(v: float | None) -> bool:
    return v is not None and np.isfinite(v) and v > 0


def plan_column(model: ColumnModel) -> ColumnPlan:
    """Check a fitted column and turn it into a :class:`ColumnPlan`.

    Raises
    ------
    ValueError
        The model is inconsistent: kept ranks are not ``0 .. m-1``, a kept mode's kind
        does not fit the column type, a kept Gaussian lacks a positive finite weight or
        std or a finite mean, or a continuous column keeps no Gaussian. The message
        starts with the column name.
    """
    name, ctype = model.column, model.column_type
    kept = model.kept
    allowed = {"continuous": {"gaussian"}, "mixed": {"gaussian", "special"}, "categorical": {"category"}}
    if ctype not in allowed:
        raise ValueError(f"{name}: unknown column_type {ctype!r} (expected continuous, mixed or categorical)")
    if [m.rank for m in kept] != list(range(len(kept))):
        raise ValueError(f"{name}: ranks of kept modes must be 0..{len(kept) - 1}, got {[m.rank for m in kept]}")
    if not kept:
        raise ValueError(f"{name}: the fit keeps no mode")
    for m in kept:
        if m.kind not in allowed[ctype]:
            raise ValueError(f"{name}: a {ctype} column cannot keep a mode of kind {m.kind!r} (rank {m.rank})")
        if m.kind == "gaussian" and not (
            _finite_positive(m.weight) and _finite_positive(m.std) and m.mean is not None and np.isfinite(m.mean)
        ):
            raise ValueError(f"{name}: kept Gaussian of rank {m.rank} needs weight > 0, std > 0 and a finite mean")
        if m.kind == "special" and (m.value_double is None or not np.isfinite(m.value_double)):
            raise ValueError(f"{name}: special mode of rank {m.rank} needs a finite value_double")
    if ctype == "continuous" and not any(m.kind == "gaussian" for m in kept):
        raise ValueError(f"{name}: a continuous column needs at least one kept Gaussian")

    # Posterior components: every Gaussian with usable parameters, in fit order.
    post = [
        m
        for m in sorted(model.modes, key=lambda m: m.component)
        if m.kind == "gaussian"
        and _finite_positive(m.weight)
        and _finite_positive(m.std)
        and m.mean is not None
        and np.isfinite(m.mean)
    ]
    kept_g = [m for m in kept if m.kind == "gaussian"]
    position = {m.component: i for i, m in enumerate(post)}
    specials = [m for m in kept if m.kind == "special"]
    f64 = np.float64
    return ColumnPlan(
        column=name,
        column_type=ctype,
        n_modes=len(kept),
        post_weights=np.array([m.weight for m in post], f64),
        post_means=np.array([m.mean for m in post], f64),
        post_stds=np.array([m.std for m in post], f64),
        post_kept=np.array([position[m.component] for m in kept_g], np.int64),
        kept_ranks=np.array([m.rank for m in kept_g], np.int32),
        kept_weights=np.array([m.weight for m in kept_g], f64),
        kept_means=np.array([m.mean for m in kept_g], f64),
        kept_stds=np.array([m.std for m in kept_g], f64),
        special_values=np.array([m.value_double for m in specials], f64),
        special_ranks=np.array([m.rank for m in specials], np.int32),
        rank_mean=np.array([m.mean if m.kind == "gaussian" else np.nan for m in kept], f64),
        rank_std=np.array([m.std if m.kind == "gaussian" else np.nan for m in kept], f64),
        rank_special=np.array([m.value_double if m.kind == "special" else np.nan for m in kept], f64),
        categories=tuple(None if m.is_null else m.value for m in kept),
        null_rank=next((m.rank for m in kept if m.is_null), None),
        dtype=INTEGER_TYPES.get(model.settings.get("source_type") or "", pl.Float64()) if ctype != "categorical"
        else pl.String(),
    )


# --------------------------------------------------------------------------- names and schemas


def flag_name(stat: str, column: str) -> str:
    """Name of a per-row flag column, e.g. ``__clipped__Amount``."""
    return f"__{stat}__{column}"


def block_names(plan: ColumnPlan) -> list[str]:
    """The one-hot block of a column, in rank order (plus ``__unknown`` for a categorical)."""
    names = [f"{plan.column}__{r}" for r in range(plan.n_modes)]
    return [*names, f"{plan.column}__unknown"] if plan.is_categorical else names


class _Columns(dict):
    """An output schema that refuses a name twice: a fitted column's name can collide
    with a name derived from another (a column ``x__null`` beside ``x``)."""

    def __setitem__(self, key: str, value: pl.DataType) -> None:
        if key in self:
            raise ValueError(f"output column {key!r} is produced twice (a fitted column name collides with a derived one)")
        super().__setitem__(key, value)

    def update(self, other: Mapping[str, pl.DataType]) -> None:  # type: ignore[override]
        for key, value in other.items():
            self[key] = value


def encoded_schema(plans: Sequence[ColumnPlan], *, layout: Layout) -> dict[str, pl.DataType]:
    """Columns and dtypes of the model-ready frame (without flag columns).

    Raises
    ------
    ValueError
        Two output columns would have the same name.
    """
    schema: dict[str, pl.DataType] = _Columns({ROW_ID: pl.Int64()})
    for p in plans:
        c = p.column
        if not p.is_categorical:
            schema[c] = pl.Float64()
        if layout == "wide":
            schema[f"{c}__component"] = pl.Int32()
        else:
            schema.update({b: pl.Float64() for b in block_names(p)})
        if not p.is_categorical:
            schema[f"{c}__null"] = pl.Float64()
    return schema


def encode_schema(plans: Sequence[ColumnPlan], *, layout: Layout) -> dict[str, pl.DataType]:
    """:func:`encode`'s output: :func:`encoded_schema`, then the per-row flag columns.

    Raises
    ------
    ValueError
        Two output columns would have the same name.
    """
    schema = encoded_schema(plans, layout=layout)
    for p in plans:
        if p.is_categorical:
            schema[flag_name("unknown", p.column)] = pl.Boolean()
            schema[flag_name("null", p.column)] = pl.Boolean()
        else:
            schema[flag_name("nonfinite", p.column)] = pl.Boolean()
            schema[flag_name("clipped", p.column)] = pl.Boolean()
            schema[flag_name("resampled", p.column)] = pl.Boolean()
            schema[flag_name("error", p.column)] = pl.Float64()
    return schema


LONG_SCHEMA: dict[str, pl.DataType] = {
    "column": pl.String(),
    ROW_ID: pl.Int64(),
    "normalized": pl.Float64(),
    "component_rank": pl.Int32(),
    "is_null": pl.Boolean(),
}


def decoded_schema(plans: Sequence[ColumnPlan], *, flags: bool = True) -> dict[str, pl.DataType]:
    """Columns of :func:`decode`'s output: ``_row_id``, the original columns, then flags."""
    schema: dict[str, pl.DataType] = _Columns({ROW_ID: pl.Int64()})
    schema.update({p.column: p.dtype for p in plans})
    if flags:
        for p in plans:
            schema[flag_name("clipped", p.column)] = pl.Boolean()
            if p.is_categorical:
                schema[flag_name("unknown", p.column)] = pl.Boolean()
    return schema


@dataclass(frozen=True)
class Stat:
    """One summary figure: ``op`` (sum or max) of a flag column, per fitted column.

    ``unless`` names a boolean flag column whose true rows are left out (e.g. the
    largest error among rows that were *not* clipped).
    """

    column: str
    name: str
    op: Literal["sum", "max"]
    source: str
    unless: str | None = None


def encode_stats(plans: Sequence[ColumnPlan]) -> list[Stat]:
    """The figures the forward run reports per column, over :func:`encode`'s output."""
    stats: list[Stat] = []
    for p in plans:
        c = p.column
        if p.is_categorical:
            stats += [Stat(c, "unknown", "sum", flag_name("unknown", c)), Stat(c, "null", "sum", flag_name("null", c))]
        else:
            clipped = flag_name("clipped", c)
            stats += [
                Stat(c, "null_or_nonfinite", "sum", f"{c}__null"),
                Stat(c, "nonfinite", "sum", flag_name("nonfinite", c)),
                Stat(c, "clipped", "sum", clipped),
                Stat(c, "resampled", "sum", flag_name("resampled", c)),
                Stat(c, "max_abs_error", "max", flag_name("error", c)),
                Stat(c, "max_abs_error_unclipped", "max", flag_name("error", c), unless=clipped),
            ]
    return stats


def decode_stats(plans: Sequence[ColumnPlan]) -> list[Stat]:
    """The figures the inverse run reports per column, over :func:`decode`'s output."""
    stats: list[Stat] = []
    for p in plans:
        c = p.column
        stats.append(Stat(c, "clipped", "sum", flag_name("clipped", c)))
        if p.is_categorical:
            stats.append(Stat(c, "unknown", "sum", flag_name("unknown", c)))
    return stats


def aggregate_stats(df: pl.DataFrame, stats: Sequence[Stat]) -> dict[str, int | float | None]:
    """Evaluate ``stats`` over a Polars frame (the Polars-only path; Spark has its own)."""
    exprs = []
    for i, s in enumerate(stats):
        col = pl.col(s.source)
        if s.unless is not None:
            col = col.filter(~pl.col(s.unless))
        exprs.append((col.cast(pl.Int64).sum() if s.op == "sum" else col.max()).alias(str(i)))
    row = df.select(exprs).row(0)
    return {str(i): v for i, v in enumerate(row)}


def combine_stats(stats: Sequence[Stat], a: Mapping[str, int | float | None], b: Mapping[str, int | float | None]):
    """Merge two partial results of :func:`aggregate_stats` (sums add, maxima take the max)."""
    out = {}
    for i, s in enumerate(stats):
        k = str(i)
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            out[k] = y if x is None else x
        else:
            out[k] = x + y if s.op == "sum" else max(x, y)
    return out


# --------------------------------------------------------------------------- forward


def _restore(value: np.ndarray, dtype: pl.DataType) -> np.ndarray:
    """The inverse's values in the input's type: rounded and range-clipped for an integer column."""
    if not dtype.is_integer():
        return value
    np_type = np.dtype(str(dtype).lower())  # Int8 .. Int64 -> int8 .. int64
    info = np.iinfo(np_type)
    return np.clip(np.rint(value), info.min, info.max).astype(np_type)


def _encode_numeric(values: pl.Series, row_ids: np.ndarray, plan: ColumnPlan, seed: int, sampling: Sampling):
    x = values.cast(pl.Float64).to_numpy()  # nulls become NaN; is_null keeps them apart
    is_null = values.is_null().to_numpy()
    finite = np.isfinite(x)
    n = len(x)
    z = np.zeros(n)
    rank = np.zeros(n, np.int32)
    error = np.zeros(n)
    clipped = np.zeros(n, bool)
    resampled = np.zeros(n, bool)
    todo = finite.copy()
    for value, r in zip(plan.special_values, plan.special_ranks, strict=True):
        hit = todo & (x == value)  # a listed modal value: its own mode, z = 0, exact
        rank[hit] = r
        todo &= ~hit
    idx = np.flatnonzero(todo)
    if idx.size and plan.kept_means.size == 0:
        # A mixed column whose fit kept only special values: a new value goes to the
        # nearest one and counts as clipped (its value is lost, like a clipped z).
        xs = x[idx]
        j = np.abs(xs[:, None] - plan.special_values[None, :]).argmin(axis=1)
        rank[idx] = plan.special_ranks[j]
        error[idx] = np.abs(xs - plan.special_values[j])
        clipped[idx] = True
    elif idx.size:
        xs = x[idx]
        if sampling == "rdt":
            probs = _posterior(xs, plan.post_weights, plan.post_means, plan.post_stds)[plan.post_kept]
        else:
            probs = _posterior(xs, plan.kept_weights, plan.kept_means, plan.kept_stds)
        choice = _sample(probs, uniforms(row_ids[idx], seed=seed, column=plan.column))
        with np.errstate(over="ignore", invalid="ignore"):  # |x - mu| beyond float range: clipped
            out = ~(np.abs((xs - plan.kept_means[choice]) / (STD_MULTIPLIER * plan.kept_stds[choice])) <= CLIP)
        if sampling == "tail-safe" and out.any():
            j = np.flatnonzero(out)
            u = uniforms(row_ids[idx[j]], seed=seed, column=plan.column, draw=1)
            choice[j], represented = resample_unclipped(xs[j], u, weights=plan.kept_weights, means=plan.kept_means,
                                                        stds=plan.kept_stds)
            resampled[idx[j[represented]]] = True
        mu, width = plan.kept_means[choice], STD_MULTIPLIER * plan.kept_stds[choice]
        with np.errstate(over="ignore", invalid="ignore"):
            raw = (xs - mu) / width
            zc = np.clip(raw, -CLIP, CLIP)
            z[idx] = zc
            rank[idx] = plan.kept_ranks[choice]
            clipped[idx] = ~(np.abs(raw) <= CLIP)
            # what the inverse returns for this row (decode's arithmetic, in the input's type)
            error[idx] = np.abs(_restore(zc * width + mu, plan.dtype) - xs)
    return z, rank, ~finite, clipped, resampled, error, is_null


def _encode_categorical(values: pl.Series, plan: ColumnPlan):
    s = values if values.dtype == pl.String else values.cast(pl.String)
    known = [(c, r) for r, c in enumerate(plan.categories) if c is not None]
    rank = s.replace_strict([c for c, _ in known], [r for _, r in known], default=None, return_dtype=pl.Int32)
    is_null = s.is_null().to_numpy()
    rank = rank.fill_null(-1).to_numpy().astype(np.int32)
    if plan.null_rank is not None:
        rank[is_null] = plan.null_rank
    unknown = rank < 0  # unseen at fit time (or null without a null category): explicit unknown rank
    rank[unknown] = plan.unknown_rank
    return rank, unknown, is_null


def encode(
    df: pl.DataFrame, plans: Sequence[ColumnPlan], *, seed: int, layout: Layout = "wide",
    sampling: Sampling = "tail-safe",
) -> pl.DataFrame:
    """Transform fitted columns to the model-ready frame, plus per-row flag columns.

    Parameters
    ----------
    df : polars.DataFrame
        ``_row_id`` (int64) and every planned column (numeric for continuous/mixed;
        any type castable to string for categorical).
    plans : sequence of ColumnPlan
    seed : int
        Seed of the mode sampling (with the column and ``_row_id``).
    layout : {"wide", "onehot"}
    sampling : {"tail-safe", "rdt"}
        See the module docstring.

    Returns
    -------
    polars.DataFrame
        :func:`encode_schema` columns, one row per input row.
    """
    row_ids = df[ROW_ID].cast(pl.Int64).to_numpy()
    n = df.height
    out: dict[str, np.ndarray | pl.Series] = {ROW_ID: row_ids}
    flags: dict[str, np.ndarray] = {}
    arange = np.arange(n)
    for p in plans:
        c = p.column
        if p.is_categorical:
            rank, unknown, is_null = _encode_categorical(df[c], p)
            flags[flag_name("unknown", c)] = unknown
            flags[flag_name("null", c)] = is_null
            missing = None
        else:
            z, rank, missing, clipped, resampled, error, is_null = _encode_numeric(df[c], row_ids, p, seed, sampling)
            flags[flag_name("nonfinite", c)] = missing & ~is_null
            flags[flag_name("clipped", c)] = clipped
            flags[flag_name("resampled", c)] = resampled
            flags[flag_name("error", c)] = error
            out[c] = z
        if layout == "wide":
            out[f"{c}__component"] = rank
        else:
            block = np.zeros((n, len(block_names(p))))
            block[arange, rank] = 1.0
            if missing is not None:
                block[missing] = 0.0
            for j, name in enumerate(block_names(p)):
                out[name] = block[:, j]
        if missing is not None:
            out[f"{c}__null"] = missing.astype(np.float64)
    return pl.DataFrame({**out, **flags}, schema=encode_schema(plans, layout=layout))


def encode_long(df: pl.DataFrame, plans: Sequence[ColumnPlan], *, seed: int,
                sampling: Sampling = "tail-safe") -> pl.DataFrame:
    """:func:`encode` then :func:`to_long`: the ``feature_values`` rows of an input batch.

    The long rows do not depend on the model-ready layout, so recomputing them from the
    (narrow) input is cheaper than reading back the wide or one-hot table.
    """
    return to_long(encode(df, plans, seed=seed, layout="wide", sampling=sampling), plans, layout="wide")


def to_long(df: pl.DataFrame, plans: Sequence[ColumnPlan], *, layout: Layout) -> pl.DataFrame:
    """Unpivot a model-ready frame to the long ``feature_values`` rows.

    One output row per (input row, column): ``column, _row_id, normalized,
    component_rank, is_null``. Null rows have null ``normalized`` and
    ``component_rank``; a categorical has no normalised value; a one-hot block maps
    back to its argmax (exact, since :func:`encode` writes exact 0/1 blocks).
    """
    parts = []
    for p in plans:
        c = p.column
        rank = _rank_from(df, p, layout=layout, clip=False)
        if p.is_categorical:
            is_null = (rank == p.null_rank) if p.null_rank is not None else np.zeros(df.height, bool)
            normalized = pl.lit(None, pl.Float64)
            rank_expr = pl.lit(pl.Series(rank, dtype=pl.Int32))
        else:
            null = pl.col(f"{c}__null") > 0.5
            is_null = None
            normalized = pl.when(null).then(None).otherwise(pl.col(c))
            rank_expr = pl.when(null).then(None).otherwise(pl.lit(pl.Series(rank, dtype=pl.Int32)))
        part = df.select(
            pl.lit(c, pl.String).alias("column"),
            pl.col(ROW_ID).cast(pl.Int64),
            normalized.cast(pl.Float64).alias("normalized"),
            rank_expr.cast(pl.Int32).alias("component_rank"),
            (pl.lit(pl.Series(is_null)) if is_null is not None else null).alias("is_null"),
        )
        parts.append(part)
    if not parts:
        return pl.DataFrame(schema=LONG_SCHEMA)
    return pl.concat(parts, how="vertical")


# --------------------------------------------------------------------------- inverse


def _rank_from(df: pl.DataFrame, plan: ColumnPlan, *, layout: Layout, clip: bool = True):
    """Ranks of a column from ``c__component`` (rounded) or the argmax of its block.

    With ``clip``, returns ``(rank, out_of_range, missing)``: a rank is rounded and
    clipped to the valid range as RDT does (``0 .. m-1``; ``0 .. m`` for a categorical,
    where ``m`` is unknown); a null or NaN rank is ``missing``.
    """
    hi = plan.unknown_rank if plan.is_categorical else plan.n_modes - 1
    if layout == "wide":
        r = df[f"{plan.column}__component"].cast(pl.Float64).to_numpy()
        missing = ~np.isfinite(r)
        r = np.rint(np.where(missing, 0.0, r))
        out_of_range = (r < 0) | (r > hi)
        rank = np.clip(r, 0, hi).astype(np.int32)
    else:
        block = np.column_stack([df[b].cast(pl.Float64).to_numpy() for b in block_names(plan)])
        missing = np.isnan(block).all(axis=1)
        rank = np.argmax(np.nan_to_num(block, nan=-np.inf), axis=1).astype(np.int32)  # ties: lowest rank
        out_of_range = np.zeros(len(rank), bool)
    if not clip:
        return rank
    return rank, out_of_range, missing


def decode(df: pl.DataFrame, plans: Sequence[ColumnPlan], *, layout: Layout = "wide") -> pl.DataFrame:
    """Inverse transform: model-ready values back to the original columns.

    Clipping follows RDT: ``z`` to ``[-1, 1]``; a ``c__component`` rank is rounded and
    clipped to the valid ranks; a one-hot/softmax block maps to its argmax. A special
    rank returns its modal value, a categorical rank its category; the unknown rank,
    ``c__null > 0.5``, and a null or NaN input give null. An integer column (the fit's
    ``source_type``) comes back rounded, in its own type: exact where the row was not clipped.

    Parameters
    ----------
    df : polars.DataFrame
        ``_row_id`` and the columns of :func:`encoded_schema` for ``layout``.
    plans : sequence of ColumnPlan
    layout : {"wide", "onehot"}

    Returns
    -------
    polars.DataFrame
        :func:`decoded_schema` columns: ``_row_id``, each original column, then flags
        ``__clipped__c`` (``|z|`` at or beyond the forward clip bound 0.99, which every
        row the forward pass clipped carries, or a rank outside its range) and, for a
        categorical, ``__unknown__c`` (the unknown rank).
    """
    out: dict[str, object] = {ROW_ID: df[ROW_ID].cast(pl.Int64).to_numpy()}
    flags: dict[str, np.ndarray] = {}
    for p in plans:
        c = p.column
        rank, out_of_range, missing = _rank_from(df, p, layout=layout)
        if p.is_categorical:
            unknown = rank == p.unknown_rank
            lookup = pl.Series([*p.categories, None], dtype=pl.String)
            out[c] = lookup.gather(rank).scatter(np.flatnonzero(missing), None) if missing.any() else lookup.gather(rank)
            flags[flag_name("clipped", c)] = out_of_range
            flags[flag_name("unknown", c)] = unknown & ~missing
            continue
        z = df[c].cast(pl.Float64).to_numpy()
        null = (df[f"{c}__null"].cast(pl.Float64).to_numpy() > 0.5) | missing | np.isnan(z)
        zc = np.clip(z, -INVERSE_CLIP, INVERSE_CLIP)
        value = zc * (STD_MULTIPLIER * p.rank_std[rank]) + p.rank_mean[rank]
        special = ~np.isnan(p.rank_special[rank])
        value[special] = p.rank_special[rank][special]
        with np.errstate(invalid="ignore"):  # z is NaN on null rows
            value = _restore(np.where(null, 0.0, value), p.dtype)
            # at or beyond the forward clip bound: a row the forward pass clipped carries exactly +-0.99
            at_clip = ~special & ~(np.abs(z) < CLIP)
        flags[flag_name("clipped", c)] = ~null & (out_of_range | at_clip)
        out[c] = pl.Series(c, value, p.dtype).scatter(np.flatnonzero(null), None) if null.any() else value
    return pl.DataFrame({**out, **flags}, schema=decoded_schema(plans))
