"""What the Databricks notebooks show, as functions (the notebooks hold no logic).

:func:`param` reads a notebook parameter: a Databricks widget when ``dbutils`` is
there, else the environment variable ``PIPELINES_NB_<NAME>``, else the default, so
the same notebook runs on Databricks and as plain Python against a local session.
Everything shown is small: per-k metrics, model parameters, and a bounded seeded
sample for histograms.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import delta, fs
from pipelines.columns import quote

if TYPE_CHECKING:
    import polars as pl
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

    from pipelines.config import Config
    from pipelines.gmm.model import ColumnModel


def _dbutils():
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return None
    return None if shell is None else shell.user_ns.get("dbutils")


def param(name: str, default: str) -> str:
    """A notebook parameter: widget on Databricks, ``PIPELINES_NB_<NAME>`` locally, else ``default``."""
    dbutils = _dbutils()
    if dbutils is not None:
        dbutils.widgets.text(name, default)
        return dbutils.widgets.get(name)
    return os.environ.get(f"PIPELINES_NB_{name.upper()}", default)


def config() -> Config:
    """The jobs' configuration on this runtime (``conf/databricks.yaml`` on Databricks): widget defaults."""
    from pipelines.config import load_config

    return load_config()


def use_tables(cfg: Config, *roots: str) -> None:
    """Widget ``tables`` (``CATALOG.SCHEMA``; default the config's, empty = path-based) names the
    Delta tables under ``roots`` as the jobs that wrote them did (:func:`pipelines.delta.use_tables`)."""
    from pipelines.runs import table_namespace

    default = f"{cfg.tables.catalog}.{cfg.tables.schema_name}" if cfg.tables.catalog else ""
    value = param("tables", default).strip()
    namespace = table_namespace(value) if value else {"catalog": None, "schema": None}
    delta.use_tables(namespace["catalog"], namespace["schema"], roots=roots)


def show(obj: Any) -> None:
    """Display a figure, an image path or a table in a notebook; print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        interactive = get_ipython() is not None
    except ImportError:
        interactive = False
    if isinstance(obj, str) and obj.endswith(".png"):
        if interactive:
            display(Image(filename=fs.local_path(obj)))
        else:
            print(f"[plot] {obj}")
    elif interactive:
        display(obj)
    else:
        print(obj)


# --------------------------------------------------------------------------- cluster_eval


def cluster_eval_summary(output: str) -> dict[str, Any]:
    """``summary.json`` of a cluster_eval run: the best k per metric and the recommendation."""
    return json.loads(fs.read_text(fs.join(output, "summary.json")))


def cluster_eval_metrics(output: str) -> pl.DataFrame:
    """The per-k ``metrics`` table (one row per k), ordered by k."""
    return delta.scan_table(fs.join(output, "metrics")).sort("k").collect()


def cluster_eval_plots(output: str) -> list[str]:
    """Paths of the report's PNG plots."""
    plots = fs.join(output, "plots")
    local = fs.local_path(plots)
    if not os.path.isdir(local):
        return []
    return [fs.join(plots, name) for name in sorted(os.listdir(local)) if name.endswith(".png")]


# --------------------------------------------------------------------------- gmm_fit


def gmm_modes(fit_dir: str) -> pl.DataFrame:
    """Kept modes of every fitted column in rank order: kind, weight, mean, std, value, frequency."""
    import polars as pl

    return (
        delta.scan_table(fs.join(fit_dir, "models"))
        .filter(pl.col("kept"))
        .select("column", "column_type", "rank", "kind", "weight", "mean", "std", "value", "value_double", "frequency")
        .sort("column", "rank")
        .collect()
    )


def column_sample(spark: SparkSession, table: str, column: str, *, rows: int = 100_000, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``rows`` non-null values of ``column`` (bounded; never the full column)."""
    from pyspark.sql import functions as F

    df = delta.read_table(spark, table)
    total = df.count()
    fraction = min(1.0, 1.2 * rows / max(total, 1))
    picked = df.select(F.col(quote(column)).cast("double").alias("v")).where(F.col("v").isNotNull())
    sample = picked.sample(fraction=fraction, seed=seed).limit(rows).toArrow()
    return sample.column("v").to_numpy(zero_copy_only=False)


def gmm_column_figure(model: ColumnModel, values: np.ndarray | None) -> Figure:
    """Histogram of ``values`` with the fitted mixture overlaid (density scale), modes labelled by rank."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    kept = model.kept
    if model.column_type == "categorical":
        labels = ["<null>" if m.is_null else str(m.value) for m in kept]
        ax.bar(range(len(kept)), [m.frequency or 0.0 for m in kept])
        ax.set_xticks(range(len(kept)), labels, rotation=45, ha="right")
        ax.set_ylabel("share of rows")
        ax.set_title(f"{model.column}: categories by frequency rank")
        return fig
    finite = values[np.isfinite(values)]
    specials = {m.value_double for m in kept if m.kind == "special"}
    continuous = finite[~np.isin(finite, list(specials))] if specials else finite
    ax.hist(continuous, bins=120, density=True, alpha=0.5, color="tab:blue", label="data (sample)")
    if continuous.size:
        grid = np.linspace(np.quantile(continuous, 0.001), np.quantile(continuous, 0.999), 600)
        gaussians = [m for m in kept if m.kind == "gaussian"]
        total = sum(m.weight or 0.0 for m in gaussians) or 1.0
        mixture = np.zeros_like(grid)
        for m in gaussians:
            pdf = (m.weight / total) * np.exp(-0.5 * ((grid - m.mean) / m.std) ** 2) / (m.std * np.sqrt(2 * np.pi))
            mixture += pdf
            ax.plot(grid, pdf, lw=1, ls="--", label=f"rank {m.rank}: w={m.weight:.3f}")
        ax.plot(grid, mixture, color="black", lw=1.5, label="mixture")
    for m in kept:
        if m.kind == "special":
            ax.axvline(m.value_double, color="tab:red", lw=1, label=f"rank {m.rank}: value {m.value_double:g}")
    ax.set_title(f"{model.column} ({model.column_type}): {len(kept)} modes")
    ax.legend(fontsize=7)
    return fig
