"""Hand-built GMM fits and inputs for the gmm_transform tests (independent of the fit code)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines import delta
from pipelines.gmm.model import ColumnModel, Mode

SETTINGS = {"max_components": 10, "weight_threshold": 0.005, "mode": "mle", "backend": "test", "seed": 0, "fit_id": "hand"}


def gaussian_model(column: str, weights, means, stds, *, kept=None, column_type="continuous", extra=()) -> ColumnModel:
    """Gaussian modes in fit order; kept modes ranked by weight (largest first), as a fit would."""
    kept = [True] * len(weights) if kept is None else list(kept)
    order = sorted((i for i in range(len(weights)) if kept[i]), key=lambda i: -weights[i])
    rank = {i: r for r, i in enumerate(order)}
    modes = [
        Mode("gaussian", i, rank.get(i), kept[i], float(weights[i]), float(means[i]), float(stds[i]), frequency=float(weights[i]))
        for i in range(len(weights))
    ]
    return ColumnModel(column, column_type, (*modes, *extra), SETTINGS)


def amount_model() -> ColumnModel:
    """Heavy-tailed, amount-like: 3 kept modes and one dropped."""
    return gaussian_model("amount", [0.55, 0.30, 0.13, 0.002], [20.0, 120.0, 900.0, 5000.0], [8.0, 40.0, 300.0, 50.0],
                          kept=[True, True, True, False])


def bimodal_model() -> ColumnModel:
    return gaussian_model("bimodal", [0.5, 0.5], [-3.0, 4.0], [1.0, 1.5])


def mixed_model() -> ColumnModel:
    """Mixed: 0 and -1 are modal values; two Gaussians. Ranks unified: 0.0 -> 0, gaussians 1, 2, -1.0 -> 3."""
    modes = (
        Mode("special", 0, 0, True, weight=0.4, value_double=0.0, frequency=0.4),
        Mode("gaussian", 1, 1, True, 0.35, 50.0, 10.0, frequency=0.35),
        Mode("gaussian", 2, 2, True, 0.2, 200.0, 30.0, frequency=0.2),
        Mode("special", 3, 3, True, weight=0.05, value_double=-1.0, frequency=0.05),
    )
    return ColumnModel("mixed", "mixed", modes, SETTINGS)


def category_model() -> ColumnModel:
    modes = (
        Mode("category", 0, 0, True, value="b", frequency=0.5),
        Mode("category", 1, 1, True, value="a", frequency=0.3),
        Mode("category", 2, 2, True, value=None, is_null=True, frequency=0.1),
        Mode("category", 3, 3, True, value="c", frequency=0.1),
    )
    return ColumnModel("cat", "categorical", modes, SETTINGS)


def all_models() -> list[ColumnModel]:
    return [amount_model(), bimodal_model(), mixed_model(), category_model()]


def write_fit(fit_dir: str, models) -> None:
    for m in models:
        delta.write_polars(m.to_arrow(), f"{fit_dir}/models", mode="append", partition_by=["column"])


def synthetic(n: int, *, seed: int = 0, bad_rows: bool = True) -> pl.DataFrame:
    """Rows drawn from the hand-built fits, plus (with ``bad_rows``) nulls, NaN, inf,
    extremes and an unseen category at fixed positions."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(3, size=n, p=[0.55, 0.31, 0.14])
    amount = rng.normal(np.array([20.0, 120.0, 900.0])[comp], np.array([8.0, 40.0, 300.0])[comp])
    bimodal = np.where(rng.random(n) < 0.5, rng.normal(-3.0, 1.0, n), rng.normal(4.0, 1.5, n))
    kind = rng.choice(4, size=n, p=[0.4, 0.35, 0.2, 0.05])
    mixed = np.select([kind == 0, kind == 1, kind == 2], [0.0, rng.normal(50, 10, n), rng.normal(200, 30, n)], -1.0)
    cat = rng.choice(np.array(["b", "a", "c"], dtype=object), size=n, p=[0.55, 0.33, 0.12])
    df = pl.DataFrame({
        "_row_id": np.arange(n, dtype=np.int64) * 3 + 11,  # ids need not be dense
        "amount": amount,
        "bimodal": bimodal,
        "mixed": mixed,
        "cat": pl.Series(cat, dtype=pl.String),
        "other": rng.random(n),  # a column the fit does not know: ignored
    })
    if bad_rows and n >= 10:
        df = df.with_columns(
            pl.when(pl.col("_row_id") == 11).then(None)
            .when(pl.col("_row_id") == 14).then(float("nan"))
            .when(pl.col("_row_id") == 17).then(float("inf"))
            .when(pl.col("_row_id") == 20).then(1e7)  # a new extreme: clipped
            .otherwise(pl.col("amount")).alias("amount"),
            pl.when(pl.col("_row_id") == 23).then(pl.lit("zzz"))  # unseen category
            .when(pl.col("_row_id") == 26).then(None)  # null category of the fit
            .otherwise(pl.col("cat")).alias("cat"),
            pl.when(pl.col("_row_id") == 29).then(float("-inf")).otherwise(pl.col("mixed")).alias("mixed"),
        )
    return df
