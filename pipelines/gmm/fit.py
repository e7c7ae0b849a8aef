"""gmm_fit: per-column mode-specific normalisers (CTGAN / RDT / CTAB-GAN style), fitted at Spark scale.

The data are read once (:func:`summarize`): every requested column becomes a bounded
weighted summary (:mod:`pipelines.gmm.summary`). EM then runs on the driver on those
few thousand points per column (:mod:`pipelines.gmm.em`), columns in parallel on a thread
per core; optional refinement iterations each make one more pass computing EM sufficient
statistics per partition (:func:`full_data_stats`). ``backend="spark-ml"`` fits Spark
ML's GaussianMixture per column instead, for comparison.

Artifacts under ``fit_dir``, Delta tables partitioned by ``column``:

- ``models``: :data:`pipelines.gmm.model.MODEL_SCHEMA`, one row per mode;
- ``fit_status``: :data:`STATUS_SCHEMA`, one row per column (the latest attempt), with the
  input table and the Delta version it was fitted on (pinned at the start of the run) and
  why the attempt ran (first fit, ``--only``, or ``--only-drifted``: a drift run's verdict).

Each column's rows are replaced in one atomic commit (``replace_where={"column": c}``),
the model before its ``succeeded`` status, so a crash leaves a column ``running`` (and
re-fitted by the next run) but never a partial model. Columns are independent: one
failing column is recorded ``failed`` with its error and the others go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipelines import delta, fs
from pipelines.columns import default_columns
from pipelines.columns import quote as _quote
from pipelines.engine import spark_schema
from pipelines.errors import UserError
from pipelines.gmm.em import (
    LogDensity,
    Mixture,
    density_of,
    e_step,
    estimate_stats,
    point_stats,
    refine_model,
    stats_from_sums,
)
from pipelines.gmm.model import ColumnModel, models_from_rows
from pipelines.gmm.modes import build_model, fit_summary, pruning_report
from pipelines.gmm.summary import (
    PARTIAL_SCHEMA,
    SUMMARY_SCHEMA,
    ColumnSpec,
    ColumnSummary,
    coarsen,
    column_summary,
    partition_partials,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import GmmFitSettings
    from pipelines.runs import Run

MODELS, FIT_STATUS = "models", "fit_status"
SUCCEEDED, FAILED, RUNNING = "succeeded", "failed", "running"
MAX_CATEGORIES = 100_000  # a "categorical" column with more distinct values fails rather than flood the driver

STATUS_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # running | succeeded | failed
        pa.field("error", pa.string()),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("seconds", pa.float64()),  # since the column started, including the shared summary pass
        pa.field("n_rows", pa.int64()),
        pa.field("fit_id", pa.string()),  # run id of the attempt
        pa.field("input_table", pa.string()),  # the table fitted on, and its Delta version (drift's baseline)
        pa.field("input_version", pa.int64()),
        pa.field("reason", pa.string()),  # why this attempt ran: first fit, --only, a drift run's verdict
    ]
)

_STATS_DDL = "column string, component int, nk double, s1 double, s2 double, log_norm double, n bigint"
_NUMERIC = {"tinyint", "smallint", "int", "bigint", "float", "double"}


def _is_numeric(spark_type: str) -> bool:
    return spark_type in _NUMERIC or spark_type.startswith("decimal(")


# ---------------------------------------------------------------------------- the Spark passes


def summarize(df: DataFrame, specs: Sequence[ColumnSpec], *, max_bins: int) -> dict[str, ColumnSummary]:
    """One pass over ``df``: the bounded summary of every column in ``specs``.

    Partitions emit partial summaries (``mapInArrow``), Spark adds them up per
    (column, bin), and each column's bins are coarsened to at most ``max_bins`` points
    (``applyInArrow`` per column). Only the coarsened summaries reach the driver.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Holds the spec columns; numeric columns as double, categorical ones as string.
    specs : sequence of ColumnSpec
    max_bins : int

    Returns
    -------
    dict of column -> ColumnSummary
    """
    from pyspark.sql import functions as F

    # positional aliases: any column name (dots, spaces, unicode) is safe inside the pass
    alias = {f"c{i}": spec for i, spec in enumerate(specs)}
    inner = [replace(spec, column=name) for name, spec in alias.items()]
    projected = df.select(*[F.col(_quote(spec.column)).alias(name) for name, spec in alias.items()])
    partials = projected.mapInArrow(lambda batches: partition_partials(batches, inner), spark_schema(PARTIAL_SCHEMA))
    summed = partials.groupBy("column", "part", "key", "category").agg(
        *(F.sum(c).alias(c) for c in ("n", "sq", "sqh2", "sqhl", "sql2")),
        F.min("vmin").alias("vmin"),
        F.max("vmax").alias("vmax"),
    )
    coarse = summed.groupBy("column").applyInArrow(
        lambda table: _coarsen_or_flag(table, max_bins=max_bins), spark_schema(SUMMARY_SCHEMA)
    )
    return _summaries(coarse.toArrow(), alias)  # bounded: <= max_bins + specials + MAX_CATEGORIES rows per column


def summarize_rows(batches: Iterable[pa.RecordBatch], specs: Sequence[ColumnSpec], *,
                   max_bins: int) -> dict[str, ColumnSummary]:
    """:func:`summarize` over rows read on the driver: the same summaries, bit for bit.

    The partial sums are integers (and min/max), so summing them over one stream of
    batches or over Spark's partitions gives the same table, and the coarsening is the
    same code. ``batches`` hold the spec columns (by name) cast as :func:`summarize`'s ``df`` has them.
    """
    partials = pa.Table.from_batches(list(partition_partials(batches, specs)), schema=PARTIAL_SCHEMA)
    names = partials.column("column").to_numpy(zero_copy_only=False)
    by_name = {spec.column: spec for spec in specs}
    coarse = [_coarsen_or_flag(partials.filter(pa.array(names == name)), max_bins=max_bins) for name in by_name]
    return _summaries(pa.concat_tables(coarse), by_name)


def _summaries(table: pa.Table, alias: Mapping[str, ColumnSpec]) -> dict[str, ColumnSummary]:
    """Each column's :class:`ColumnSummary` from the coarsened rows of every (aliased) column."""
    names = table.column("column").to_numpy(zero_copy_only=False)
    out = {}
    for name, spec in alias.items():
        rows = table.filter(pa.array(names == name))
        out[spec.column] = column_summary(rows, spec) if not _too_many(rows) else _TooMany(spec, rows)
    return out


def _coarsen_or_flag(table: pa.Table, *, max_bins: int) -> pa.Table:
    part = table.column("part").to_numpy(zero_copy_only=False)
    n_categories = int((part == "category").sum())
    if n_categories > MAX_CATEGORIES:
        flag = pa.table({"column": [table.column("column")[0].as_py()], "part": ["too_many"], "n": [n_categories]})
        return coarsen(flag, max_bins=max_bins)
    return coarsen(table, max_bins=max_bins)


def _too_many(rows: pa.Table) -> bool:
    return "too_many" in rows.column("part").to_pylist()


class _TooMany:
    """Stands in for the summary of a categorical column with too many categories."""

    def __init__(self, spec: ColumnSpec, rows: pa.Table) -> None:
        self.spec, self.n = spec, rows.column("n")[0].as_py()

    def error(self) -> str:
        return f"{self.n} distinct values, more than {MAX_CATEGORIES} allowed for a categorical column"


def full_data_stats(
    df: DataFrame, densities: Mapping[str, LogDensity], specials: Mapping[str, Sequence[float]]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float, int]]:
    """One pass: per column, EM sufficient statistics of ``densities`` over all its rows.

    Rows that are null/NaN/inf or equal to one of the column's ``specials`` are skipped.
    Each partition computes ``(nk, s1, s2, log_norm)`` per component
    (:func:`pipelines.gmm.em.point_stats`), Spark adds them up, the driver gets k rows per column.

    Returns
    -------
    dict of column -> (nk, s1, s2, log_norm_sum, n)
        For a plain mixture density ``log_norm_sum / n`` is the mean log-likelihood per row.
    """
    from pyspark.sql import functions as F

    names = list(densities)
    alias = {f"c{i}": c for i, c in enumerate(names)}
    params = {a: (densities[c], tuple(specials.get(c, ()))) for a, c in alias.items()}
    projected = df.select(*[F.col(_quote(c)).cast("double").alias(a) for a, c in alias.items()])

    def partition_stats(batches):
        acc = {a: None for a in params}
        for batch in batches:
            for a, (dens, special) in params.items():
                x = pl.Series(batch.column(a)).fill_null(np.nan).to_numpy()
                keep = np.isfinite(x)
                for s in special:
                    keep &= x != s
                x = x[keep]
                if x.size:
                    nk, s1, s2, ll = point_stats(x, dens)
                    part = np.r_[nk, s1, s2, ll, x.size]
                    acc[a] = part if acc[a] is None else acc[a] + part
        for a, total in acc.items():
            if total is None:
                continue
            k = params[a][0].m.size
            yield pa.RecordBatch.from_pydict(
                {
                    "column": [a] * k,
                    "component": pa.array(range(k), pa.int32()),
                    "nk": total[:k], "s1": total[k:2 * k], "s2": total[2 * k:3 * k],
                    "log_norm": [float(total[3 * k])] * k, "n": pa.array([int(total[-1])] * k, pa.int64()),
                }
            )

    reduced = (
        projected.mapInArrow(partition_stats, _STATS_DDL)
        .groupBy("column", "component")
        .agg(*(F.sum(c).alias(c) for c in ("nk", "s1", "s2", "log_norm", "n")))
        .toArrow()  # k rows per column
        .sort_by([("column", "ascending"), ("component", "ascending")])
    )
    out = {}
    for a, column in alias.items():
        rows = reduced.filter(pa.array(reduced.column("column").to_numpy(zero_copy_only=False) == a))
        if rows.num_rows:
            get = lambda c, r=rows: r.column(c).to_numpy()  # noqa: E731
            out[column] = (get("nk"), get("s1"), get("s2"), float(get("log_norm")[0]), int(get("n")[0]))
    return out


def mean_log_likelihood(df: DataFrame, mixtures: Mapping[str, Mixture],
                        specials: Mapping[str, Sequence[float]] | None = None) -> dict[str, float]:
    """Mean log-likelihood per row of each column's mixture over its finite, non-special rows (one pass)."""
    stats = full_data_stats(df, {c: density_of(m) for c, m in mixtures.items()}, specials or {})
    return {c: s[3] / s[4] for c, s in stats.items()}


def refine(
    df: DataFrame,
    mixtures: Mapping[str, Mixture],
    summaries: Mapping[str, ColumnSummary],
    *,
    mode: str,
    iterations: int,
) -> dict[str, Mixture]:
    """Full-data EM iterations from the summary fits, all columns in the same passes."""
    models = {}
    for c, mix in mixtures.items():
        s = summaries[c]
        model = refine_model(s.values, s.counts, s.variances, mode=mode)
        models[c] = model
        # start from the summary fit: one M-step from its responsibilities on the summary points
        # (this also sets the variational state a Bayesian fit needs beyond weights/means/stds)
        _, resp = e_step(s.values, s.variances, density_of(mix))
        model.m_step(estimate_stats(s.values, s.counts, s.variances, resp))
    specials = {c: summaries[c].spec.specials for c in mixtures}
    for _ in range(iterations):
        densities = {c: m.density() for c, m in models.items()}
        stats = full_data_stats(df, densities, specials)
        for c, (nk, s1, s2, _, n) in stats.items():
            models[c].m_step(stats_from_sums(nk, s1, s2, densities[c].m, n))
    out = {}
    for c, model in models.items():
        w, m, s = model.mixture()
        out[c] = Mixture(weights=w, means=m, stds=s, n_iter=mixtures[c].n_iter + iterations,
                         converged=mixtures[c].converged)
    return out


def spark_ml_mixture(df: DataFrame, column: str, specials: Sequence[float], *, k: int, max_iter: int,
                     seed: int) -> Mixture:
    """Spark ML's GaussianMixture on a column's finite, non-special values (the comparison backend).

    Every EM iteration is a full pass over the data; ``k = 1`` (which Spark ML refuses)
    falls back to the values' mean and standard deviation.
    """
    from pyspark.ml.clustering import GaussianMixture
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    x = F.col(_quote(column)).cast("double")
    keep = x.isNotNull() & ~F.isnan(x) & (F.abs(x) != float("inf"))
    for s in specials:
        keep &= x != F.lit(float(s))
    values = df.select(x.alias("x")).where(keep)
    if k == 1:
        row = values.agg(F.avg("x").alias("m"), F.stddev_pop("x").alias("s")).first()
        return Mixture(weights=np.ones(1), means=np.array([row["m"]]), stds=np.array([row["s"]]), converged=True)
    features = VectorAssembler(inputCols=["x"], outputCol="features").transform(values)
    fitted = GaussianMixture(k=k, maxIter=max_iter, seed=seed, featuresCol="features").fit(features)
    gaussians = fitted.gaussiansDF.collect()  # k rows
    return Mixture(
        weights=np.asarray(fitted.weights, dtype=np.float64),
        means=np.array([g["mean"][0] for g in gaussians]),
        stds=np.sqrt([g["cov"].toArray()[0, 0] for g in gaussians]),
        n_iter=int(fitted.summary.numIter),
    )


# ---------------------------------------------------------------------------- artifacts


def _path(fit_dir: str, table: str) -> str:
    return fs.join(fit_dir, table)


def read_status(fit_dir: str) -> dict[str, dict[str, Any]]:
    """The ``fit_status`` row of every column (empty if nothing was fitted yet)."""
    path = _path(fit_dir, FIT_STATUS)
    if not delta.table_exists(path):
        return {}
    return {row["column"]: row for row in delta.scan_table(path).collect().to_dicts()}


def load_models(fit_dir: str, *, columns: Sequence[str] | None = None) -> dict[str, ColumnModel]:
    """Load fitted models without refitting.

    Parameters
    ----------
    fit_dir : str
        The ``--fit-dir`` of a ``gmm_fit`` run.
    columns : sequence of str, optional
        Columns wanted (default: every column whose latest fit succeeded).

    Returns
    -------
    dict of column -> ColumnModel
        Only columns whose ``fit_status`` is ``succeeded`` (a column being refitted, or
        whose last attempt failed, is not returned).

    Raises
    ------
    UserError
        ``fit_dir`` holds no models, or a requested column has no succeeded fit.
    """
    path = _path(fit_dir, MODELS)
    if not delta.table_exists(path):
        raise UserError(f"{path}: no fitted models (run gmm_fit first)")
    ready = {c for c, row in read_status(fit_dir).items() if row["status"] == SUCCEEDED}
    wanted = ready if columns is None else set(columns)
    missing = sorted(wanted - ready)
    if missing:
        raise UserError(f"{fit_dir}: no succeeded fit for column(s) {', '.join(missing)}")
    frame = delta.scan_table(path).filter(pl.col("column").is_in(sorted(wanted))).collect()
    return models_from_rows(frame.to_dicts())


def _replace_column(fit_dir: str, table: str, data: pa.Table, column: str) -> None:
    # one atomic commit per column: readers see the old rows or the new ones, never a mix
    delta.write_polars(data, _path(fit_dir, table), mode="overwrite", partition_by=["column"],
                       replace_where={"column": column})


def _now() -> datetime:
    return datetime.now(UTC)


class _StatusBook:
    """Writes one column's ``fit_status`` row as it moves running -> succeeded | failed."""

    def __init__(self, fit_dir: str, fit_id: str, previous: Mapping[str, Mapping[str, Any]], *,
                 input_table: str, input_version: int) -> None:
        self.fit_dir, self.fit_id, self.previous = fit_dir, fit_id, previous
        self.input_table, self.input_version = input_table, input_version
        self.rows: dict[str, dict[str, Any]] = {}
        self._t0: dict[str, float] = {}

    def start(self, column: str, reason: str) -> None:
        attempt = int((self.previous.get(column) or {}).get("attempt") or 0) + 1
        self._t0[column] = time.monotonic()
        self.rows[column] = {"column": column, "status": RUNNING, "error": None, "attempt": attempt,
                             "started_at": _now(), "finished_at": None, "seconds": None, "n_rows": None,
                             "fit_id": self.fit_id, "input_table": self.input_table,
                             "input_version": self.input_version, "reason": reason}
        self._write(column)

    def finish(self, column: str, status: str, *, n_rows: int | None = None, error: str | None = None) -> None:
        row = self.rows[column]
        row.update(status=status, error=error, n_rows=n_rows, finished_at=_now(),
                   seconds=round(time.monotonic() - self._t0[column], 3))
        self._write(column)

    def _write(self, column: str) -> None:
        _replace_column(self.fit_dir, FIT_STATUS, pa.Table.from_pylist([self.rows[column]], schema=STATUS_SCHEMA),
                        column)


# ---------------------------------------------------------------------------- the stage


def plan_columns(dtypes: Sequence[tuple[str, str]], settings: GmmFitSettings) -> list[ColumnSpec]:
    """The columns to fit and their kinds, from the flags and the input's ``(name, type)`` list.

    Every column named in ``columns``, ``categorical`` or ``mixed`` is fitted; a column is
    categorical or mixed when listed there, continuous otherwise. With none named, every
    numeric column not starting with ``_`` (``_row_id`` and other bookkeeping) is continuous.

    Raises
    ------
    UserError
        A named column is not in the input, is not numeric but not categorical, is both
        categorical and mixed, or a special value is not finite.
    """
    names = [n for n, _ in dtypes]
    categorical, mixed = list(settings.categorical), dict(settings.mixed)
    both = sorted(set(categorical) & set(mixed))
    if both:
        raise UserError(f"gmm_fit: column(s) {', '.join(both)} listed both as categorical and as mixed")
    requested = list(dict.fromkeys([*(settings.columns or []), *categorical, *mixed]))
    if not requested:
        requested = default_columns((n, _is_numeric(t)) for n, t in dtypes)
        if not requested:
            raise UserError(f"{settings.input}: no numeric columns to fit (name them with --columns)")
    missing = [c for c in requested if c not in names]
    if missing:
        raise UserError(f"{settings.input}: column(s) not found: {', '.join(missing)} (has {', '.join(names)})")
    types = dict(dtypes)
    text = [c for c in requested if c not in categorical and not _is_numeric(types[c])]
    if text:
        listed = ", ".join(f"{c} ({types[c]})" for c in text)
        raise UserError(f"{settings.input}: column(s) {listed} are not numeric: fit them with --categorical")
    for c, values in mixed.items():
        if not values or not all(np.isfinite(values)):
            raise UserError(f"gmm_fit.mixed.{c}: special values must be a non-empty list of finite numbers, got {values}")
    specs = []
    for c in requested:
        if c in categorical:
            specs.append(ColumnSpec(c, "categorical"))
        elif c in mixed:
            specs.append(ColumnSpec(c, "mixed", tuple(float(v) for v in dict.fromkeys(mixed[c]))))
        else:
            specs.append(ColumnSpec(c, "continuous"))
    return specs


def parse_mixed(text: str) -> dict[str, list[float]]:
    """``'d=0,-1;e=0'`` -> ``{"d": [0.0, -1.0], "e": [0.0]}`` (an argparse ``type`` for ``--mixed``)."""
    import argparse

    out: dict[str, list[float]] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        name, sep, values = item.partition("=")
        try:
            parsed = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            parsed = []
        if not sep or not name.strip() or not parsed:
            raise argparse.ArgumentTypeError(f"expected 'column=v1,v2;column2=v3', got {item!r}")
        out[name.strip()] = parsed
    if not out:
        raise argparse.ArgumentTypeError(f"expected 'column=v1,v2;column2=v3', got {text!r}")
    return out


def run(spark: SparkSession, s: GmmFitSettings, run: Run) -> None:
    """The ``gmm_fit`` job: fit every requested column that has not succeeded yet (see the module doc)."""
    if not s.input:
        raise UserError("gmm_fit.input: required (--input TABLE)")
    if s.backend == "spark-ml" and s.mode != "mle":
        raise UserError(f"gmm_fit.mode: backend 'spark-ml' fits only mode 'mle', got {s.mode!r}")
    if s.only and s.only_drifted:
        raise UserError("gmm_fit: give at most one of --only and --only-drifted")
    if not delta.table_exists(s.input):
        raise UserError(f"{s.input}: not a Delta table")
    # the version is pinned, so fit_status names exactly the data the models saw
    source = _Input(spark, s.input, delta.table_version(s.input), driver_rows=s.driver_rows)
    specs = plan_columns(source.dtypes, s)
    by_name = {spec.column: spec for spec in specs}
    if s.only:
        unknown = [c for c in s.only if c not in by_name]
        if unknown:
            raise UserError(f"gmm_fit.only: column(s) {', '.join(unknown)} are not among the columns to fit")
    # Two runs on one fit_dir would both fit every column; the second stops here instead.
    with fs.exclusive(fs.join(s.fit_dir, "_lock"), owner=run.run_id):
        _fit_columns(source, specs, s, run)


# Spark types a small input's column is cast from on the driver exactly as Spark casts it:
# to double (integers and floats; Spark's cast of a decimal is left to Spark) and, for a
# categorical column, to Spark's string form (Polars writes integers and booleans the same)
_DRIVER_DOUBLE = {"tinyint", "smallint", "int", "bigint", "float", "double"}
_DRIVER_STRING = {"string", "tinyint", "smallint", "int", "bigint", "boolean"}


class _Input:
    """The input table at its pinned version: its column types, its rows as a Spark DataFrame
    (read on first use), and the summary pass, on the driver for a small table.

    A path table whose log counts at most ``driver_rows`` rows, and that delta-rs can read,
    is summarised on the driver (:func:`summarize_rows` over the snapshot's files, as the
    log lists them, read with pyarrow): no Spark job, and the same summaries as
    :func:`summarize`. Its column types then come from the log's schema, as Spark names them.
    """

    def __init__(self, spark: SparkSession, path: str, version: int, *, driver_rows: int) -> None:
        self.spark, self.path, self.version = spark, path, version
        rows = delta.table_rows(path, version) if driver_rows else None
        self.rows = rows if rows is not None and rows <= driver_rows and delta.rust_readable(path, version) else None
        self._df: DataFrame | None = None
        if self.rows is None:
            self.dtypes = self.df.dtypes
        else:
            self.dtypes = [(f.name, f.dataType.simpleString()) for f in spark_schema(delta.table_schema(path, version))]

    @property
    def df(self) -> DataFrame:
        if self._df is None:
            self._df = delta.read_table(self.spark, self.path, version=self.version)
        return self._df

    def _driver_batches(self, wanted: Mapping[str, str]) -> Iterator[pa.RecordBatch]:
        """The snapshot's rows file by file (a file that cannot be read is named, as Spark's reads
        name it), the ``wanted`` columns cast to ``"double"`` or ``"string"``."""
        from pipelines import engine

        src = engine.source(self.path, version=self.version)
        for unit in src.units:
            for frame in engine._read_unit(unit, src.schema, list(wanted), engine.DEFAULT_BATCH_ROWS):
                yield pa.RecordBatch.from_arrays(
                    [frame.get_column(c).cast(pl.String if to == "string" else pl.Float64).to_arrow()
                     for c, to in wanted.items()], names=list(wanted))

    def summarize(self, specs: Sequence[ColumnSpec], *, max_bins: int, run: Run) -> dict[str, ColumnSummary]:
        """Every spec column's summary; numeric columns as double, categorical ones as Spark's string of the value."""
        types = dict(self.dtypes)
        wanted = {sp.column: "string" if sp.column_type == "categorical" else "double" for sp in specs}
        on_driver = self.rows is not None and all(
            types[c] in (_DRIVER_STRING if to == "string" else _DRIVER_DOUBLE) for c, to in wanted.items()
        )
        run.details["summary_on"] = "driver" if on_driver else "spark"
        if on_driver:
            run.progress(f"{self.rows} rows (at most driver_rows): summary pass on the driver")
            return summarize_rows(self._driver_batches(wanted), specs, max_bins=max_bins)
        from pyspark.sql import functions as F

        cast = [F.col(_quote(c)).cast(to).alias(c) for c, to in wanted.items()]
        return summarize(self.df.select(*cast), specs, max_bins=max_bins)


def _fit_columns(source: _Input, specs: Sequence[ColumnSpec], s: GmmFitSettings, run: Run) -> None:
    """Fit the columns of ``specs`` that have not succeeded (or ``s.only``) and write their artifacts."""
    by_name = {spec.column: spec for spec in specs}
    types = dict(source.dtypes)
    input_version = source.version
    previous = read_status(s.fit_dir)
    table = delta.table_target(s.input)  # a path under --tables is recorded as the table it names
    if s.only_drifted:
        reasons = _drifted_reasons(s.only_drifted, by_name, run)
        todo = [by_name[c] for c in reasons]
    elif s.only:
        reasons = {c: "--only" for c in s.only}
        todo = [by_name[c] for c in dict.fromkeys(s.only)]
    else:
        reasons = {spec.column: why for spec in specs
                   if (why := _refit_reason(previous.get(spec.column), table, input_version))}
        todo = [spec for spec in specs if spec.column in reasons]
    skipped = [spec.column for spec in specs if spec not in todo]
    run.counts.update(columns=len(specs), to_fit=len(todo), already_succeeded=len(skipped))
    run.outputs.update(models=_path(s.fit_dir, MODELS), fit_status=_path(s.fit_dir, FIT_STATUS))
    run.details["input"] = {"table": s.input, "version": input_version}
    if skipped and not s.only_drifted:
        run.progress(f"{len(skipped)} column(s) already fitted, skipping: {', '.join(skipped)}")
    if not todo:
        run.details["columns"] = {}
        return

    book = _StatusBook(s.fit_dir, run.run_id, previous, input_table=table, input_version=input_version)
    for spec in todo:
        book.start(spec.column, reasons[spec.column])
    errors: dict[str, str] = {}

    with run.timed("summary_pass"):
        try:
            summaries = source.summarize(todo, max_bins=s.bins, run=run)
        except Exception as exc:  # the shared pass failed: every column of this run failed with it
            for spec in todo:
                book.finish(spec.column, FAILED, error=f"summary pass: {exc}")
            raise

    def fit_one(spec: ColumnSpec) -> Mixture | None:
        summary = summaries[spec.column]
        if isinstance(summary, _TooMany):
            raise ValueError(summary.error())
        if summary.n_rows == 0:
            raise ValueError("no rows")
        return None if spec.column_type == "categorical" else _fit_column(source, summary, s)

    # EM on the summaries: columns are independent, so they run on a thread per driver core
    # (numpy releases the GIL inside its array operations: 1.7x on 2 cores). Spark ML fits
    # are Spark jobs and run one at a time. Results are taken in column order, so progress
    # lines and errors do not depend on the threads.
    mixtures: dict[str, Mixture | None] = {}
    workers = 1 if s.backend == "spark-ml" else max(1, min(len(todo), os.cpu_count() or 1))
    with run.timed("em"), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gmm-em") as pool:
        futures = [(spec, pool.submit(fit_one, spec)) for spec in todo]
        for i, (spec, future) in enumerate(futures, 1):
            c = spec.column
            try:
                mixture = future.result()
                if spec.column_type != "categorical":
                    mixtures[c] = mixture
                run.progress(f"column {i}/{len(todo)} {c}: fitted")
            except Exception as exc:  # one column's failure must not stop the others
                errors[c] = f"{type(exc).__name__}: {exc}"
                run.progress(f"column {i}/{len(todo)} {c}: failed: {errors[c]}")

    refinable = {c: m for c, m in mixtures.items() if m is not None and m.weights.size > 1}
    if s.refine_iterations and refinable and s.backend == "summary":
        with run.timed("refine"):
            try:
                mixtures.update(refine(source.df, refinable, summaries, mode=s.mode, iterations=s.refine_iterations))
            except Exception as exc:  # the shared passes failed: the columns they refine fail with them
                errors.update({c: f"refinement pass: {type(exc).__name__}: {exc}" for c in refinable})

    settings = {"max_components": s.max_components, "weight_threshold": s.weight_threshold, "mode": s.mode,
                "backend": s.backend, "seed": s.seed, "fit_id": run.run_id}
    details: dict[str, Any] = {}
    with run.timed("write"):
        for spec in todo:
            c = spec.column
            summary = summaries.get(c)
            n_rows = summary.n_rows if isinstance(summary, ColumnSummary) else None
            if c not in errors:
                try:
                    model = build_model(summary, mixtures.get(c), weight_threshold=s.weight_threshold,
                                        settings={**settings, "source_type": types[c]},
                                        prune_tolerance=s.prune_tolerance, selection=s.selection,
                                        coverage_tolerance=s.coverage_tolerance,
                                        coverage_min_rows=s.coverage_min_rows)
                    _replace_column(s.fit_dir, MODELS, model.to_arrow(), c)
                except Exception as exc:
                    errors[c] = f"{type(exc).__name__}: {exc}"
            if c in errors:
                book.finish(c, FAILED, n_rows=n_rows, error=errors[c])
                details[c] = {"status": FAILED, "error": errors[c]}
            else:
                book.finish(c, SUCCEEDED, n_rows=n_rows)
                details[c] = {"status": SUCCEEDED, "type": spec.column_type, "n_modes": model.n_modes,
                              "n_rows": n_rows, "n_null": summary.n_null,
                              "summary_points": int(summary.values.size), "exact": summary.exact}
                if spec.column_type != "categorical":
                    details[c].update(pruning_report(model))
    run.details["columns"] = details
    run.counts.update(fitted=len(todo) - len(errors), failed=len(errors))
    if errors:
        failed = [spec.column for spec in todo if spec.column in errors]
        run.status = "failed"
        run.error = "column(s) failed: " + "; ".join(f"{c}: {errors[c]}" for c in failed)
        run.progress(f"error: {len(failed)} column(s) failed: " + "; ".join(f"{c}: {errors[c]}" for c in failed))


def _refit_reason(previous: Mapping[str, Any] | None, table: str, version: int) -> str | None:
    """Why a column needs a fit (None: it succeeded on this very input, so a re-run skips it)."""
    if previous is None:
        return "not fitted yet"
    if previous["status"] != SUCCEEDED:
        return f"last attempt {previous['status']}"
    before = delta.table_target(previous["input_table"]) if previous["input_table"] else None
    if before != table:
        return f"input changed: fitted on {before} version {previous['input_version']}, the input is {table}"
    if previous["input_version"] != version:
        return f"input changed: fitted on version {previous['input_version']}, the input is at version {version}"
    return None


def _drifted_reasons(drift_dir: str, by_name: Mapping[str, ColumnSpec], run: Run) -> dict[str, str]:
    """The columns the last drift run in ``drift_dir`` marked drifted, with its reasons (fitted columns only)."""
    from pipelines.drift import read_summary

    summary = read_summary(drift_dir)
    drifted = list(summary["drifted"])
    outside = [c for c in drifted if c not in by_name]
    if outside:
        run.warn(f"drifted column(s) {', '.join(outside)} are not among the columns to fit; not refitted")
    reasons = {c: f"drift run {summary['run_id']}: {summary['columns'][c]['reason']}" for c in drifted if c in by_name}
    run.details["only_drifted"] = {"drift_run": summary["run_id"], "columns": reasons}
    if reasons:
        run.progress(f"refitting {len(reasons)} drifted column(s): {', '.join(reasons)}")
    else:
        run.progress(f"no column drifted in drift run {summary['run_id']} ({drift_dir}): nothing to refit")
    return reasons


def _fit_column(source: _Input, summary: ColumnSummary, s: GmmFitSettings) -> Mixture | None:
    if s.backend == "summary" or summary.values.size == 0 or (summary.exact and summary.values.size == 1):
        return fit_summary(summary, max_components=s.max_components, mode=s.mode, seed=s.seed,
                           n_init=s.n_init, max_iter=s.max_iter)
    k = min(s.max_components, summary.distinct_lower_bound, summary.values.size)
    return spark_ml_mixture(source.df, summary.spec.column, summary.spec.specials, k=k, max_iter=s.max_iter or 100,
                            seed=s.seed)
