"""The ``gmm_transform`` stage: fitted GMM normalisers applied file by file, and inverted.

Forward (``OUT`` = ``--output``), one pass over the input's files (:mod:`pipelines.engine`)::

    input (Delta/Parquet: _row_id + fitted columns)
      -> kernels.encode per batch
      -> OUT/transformed_values   wide or onehot, one row per _row_id
      -> kernels.to_long of the same batch
      -> OUT/feature_values       long, partitioned by column

With ``--layout long`` only ``feature_values`` is written. The per-row flag columns of
:func:`~pipelines.gmm.kernels.encode` (clipped, NaN/inf, unknown category,
reconstruction error) are folded into the run's figures by the same tasks (a
:class:`~pipelines.engine.Reducer`), then dropped: no extra pass for the figures and
nothing collected but the figures.

Inverse (``BACK`` = ``--output``, input = a ``transformed_values`` table, its layout
detected from its columns): ``kernels.decode`` per batch -> ``BACK/inverted_values``.

The engine (``spark`` or ``local``) only schedules the tasks: the kernels, units and
written rows are the same, and the uniforms are keyed by ``(seed, column, _row_id)``,
so outputs are identical whatever the engine or the number of input files.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines import delta, fs
from pipelines.engine import Engine, Reducer, Sink, arrow_schema, record
from pipelines.errors import UserError
from pipelines.gmm import kernels
from pipelines.gmm.kernels import ROW_ID, ColumnPlan, Stat
from pipelines.gmm.model import models_from_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import GmmTransformSettings
    from pipelines.runs import Run

JOB = "gmm_transform"
FEATURE_VALUES = "feature_values"
TRANSFORMED_VALUES = "transformed_values"
INVERTED_VALUES = "inverted_values"


# --------------------------------------------------------------------------- inputs


def load_plans(fit_dir: str) -> list[ColumnPlan]:
    """Read ``<fit_dir>/models`` (a small table) and check every fitted column.

    Raises
    ------
    UserError
        No models table, an empty one, or an inconsistent column model (named).
    """
    from pipelines.gmm.fit import load_models, read_status

    path = fs.join(fit_dir, "models")
    if not delta.table_exists(path):
        raise UserError(f"{path}: no fitted models (not a Delta table); run gmm_fit first")
    if read_status(fit_dir):
        # A gmm_fit run: only columns whose latest fit succeeded (a failed refit
        # keeps its old model rows, which must not be used).
        models = load_models(fit_dir)
    else:
        # Models written directly as data (no fit_status table): every column.
        models = models_from_rows(delta.scan_table(path).collect().to_arrow().to_pylist())
    if not models:
        raise UserError(f"{path}: the models table has no usable (succeeded) column")
    try:
        return [kernels.plan_column(models[c]) for c in sorted(models)]
    except ValueError as exc:
        raise UserError(f"{path}: column {exc}") from None


def _input_schema(path: str) -> pa.Schema:
    """Schema of a Delta table, or of Parquet files, without reading data."""
    if delta.table_exists(path):
        return delta.table_schema(path)
    if not fs.exists(path):
        raise UserError(f"{path}: input not found")
    import pyarrow.dataset as ds

    try:
        return ds.dataset(fs.local_path(path), format="parquet").schema
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"{path}: not a Delta table or Parquet files ({exc})") from None


def _order_plans(plans: Sequence[ColumnPlan], schema: pa.Schema, path: str) -> list[ColumnPlan]:
    """The fitted columns in input order, after checking they exist and have usable types."""
    by_name = {p.column: p for p in plans}
    missing = [c for c in by_name if c not in schema.names]
    if missing:
        raise UserError(f"{path}: fitted column {missing[0]!r} is missing from the input" + (
            f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else ""))
    if ROW_ID not in schema.names or not pa.types.is_integer(schema.field(ROW_ID).type):
        raise UserError(f"{path}: column '{ROW_ID}' (integer row id from ingest) is missing or not an integer")
    for name in by_name:
        t = schema.field(name).type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        if not by_name[name].is_categorical and not numeric:
            raise UserError(f"{path}: column {name!r} is {by_name[name].column_type} in the fit but has type {t}")
    return [by_name[n] for n in schema.names if n in by_name]


def _detect_layout(schema: pa.Schema, plans: Sequence[ColumnPlan], path: str) -> kernels.Layout:
    names = set(schema.names)
    first = next((p for p in plans if not p.is_categorical), plans[0])
    if f"{first.column}__component" in names:
        layout: kernels.Layout = "wide"
    elif kernels.block_names(first)[0] in names:
        layout = "onehot"
    else:
        raise UserError(
            f"{path}: neither '{first.column}__component' (wide layout) nor "
            f"'{kernels.block_names(first)[0]}' (onehot layout) is in the input"
        )
    required = kernels.encoded_schema(plans, layout=layout)
    for name in required:
        if name not in names:
            raise UserError(f"{path}: column {name!r} of the {layout} layout is missing from the input")
    return layout


# --------------------------------------------------------------------------- figures


def _stats_reducer(stats: Sequence[Stat]) -> Reducer:
    """The run's figures (:class:`~pipelines.gmm.kernels.Stat`), folded over the kernel's output."""
    return Reducer(
        partial=functools.partial(kernels.aggregate_stats, stats=stats),
        merge=functools.partial(kernels.combine_stats, stats),
    )


def _report(run: Run, stats: Sequence[Stat], rows: int, values: Mapping[str, Any], *, totals: Mapping[str, str]) -> None:
    """Per-column figures into ``run.details["columns"]``, totals into ``run.counts``."""
    per_column: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(stats):
        v = values.get(str(i))
        if s.op == "sum":
            v = int(v or 0)
        per_column.setdefault(s.column, {})[s.name] = v
    for figures in per_column.values():
        if "clipped" in figures:
            figures["clip_fraction"] = figures["clipped"] / rows if rows else 0.0
    run.counts["rows"] = rows
    run.counts["columns"] = len(per_column)
    for total, name in totals.items():
        run.counts[total] = sum(f.get(name, 0) for f in per_column.values())
    run.details["columns"] = per_column
    errors = [f["max_abs_error"] for f in per_column.values() if f.get("max_abs_error") is not None]
    if errors:
        run.details["max_abs_error"] = max(errors)
    for column, f in per_column.items():
        if f.get("unknown"):
            run.warn(f"{column}: {f['unknown']} row(s) with a category or rank unknown to the fit (kept, mapped to the unknown rank)")


# --------------------------------------------------------------------------- forward


def transform(
    engine: Engine,
    run: Run,
    *,
    fit_dir: str,
    input_path: str,
    output: str,
    layout: str = "wide",
    seed: int = 42,
    sampling: kernels.Sampling = "tail-safe",
) -> None:
    """Transform ``input_path`` with the fit in ``fit_dir`` into ``output`` (see the module docstring).

    Parameters
    ----------
    engine : Engine
        Runs the kernel over the input's files (:mod:`pipelines.engine`).
    run : Run
        Receives counts, figures, outputs and timings.
    fit_dir, input_path, output : str
    layout : {"wide", "onehot", "long"}
    seed : int
    sampling : {"tail-safe", "rdt"}
        See :mod:`pipelines.gmm.kernels`.
    """
    with run.timed("load_fit"):
        plans = load_plans(fit_dir)
        plans = _order_plans(plans, _input_schema(input_path), input_path)
    encode_layout: kernels.Layout = "onehot" if layout == "onehot" else "wide"
    try:
        model_schema = kernels.encoded_schema(plans, layout=encode_layout)
    except ValueError as exc:
        raise UserError(f"{fit_dir}: {exc}") from None
    stats = kernels.encode_stats(plans)
    tv_path, fv_path = fs.join(output, TRANSFORMED_VALUES), fs.join(output, FEATURE_VALUES)
    # One pass writes both tables: each batch is encoded once, then projected to the
    # model-ready layout and unpivoted to the long rows.
    sinks = [Sink(fv_path, arrow_schema(kernels.LONG_SCHEMA), ("column",),
                  functools.partial(kernels.to_long, plans=plans, layout=encode_layout))]
    if layout != "long":
        sinks.insert(0, Sink(tv_path, arrow_schema(model_schema)))
    run.progress(f"{len(plans)} fitted column(s): {', '.join(p.column for p in plans)}; layout {layout}; engine {engine.name}")
    with run.timed("transform"):
        encode = functools.partial(kernels.encode, plans=plans, seed=seed, layout=encode_layout, sampling=sampling)
        result = engine.map(input_path, encode,
                            sinks, columns=[ROW_ID, *(p.column for p in plans)], reducer=_stats_reducer(stats))
    record(run.details, "transform", engine, result)
    for sink in sinks:
        run.outputs[TRANSFORMED_VALUES if sink.path == tv_path else FEATURE_VALUES] = sink.path
    run.details["layout"] = layout
    run.details["sampling"] = sampling
    _report(run, stats, result.rows, result.partial or {}, totals={
        "clipped": "clipped", "resampled": "resampled", "unknown_categories": "unknown", "null_or_nonfinite": "null_or_nonfinite",
        "nonfinite": "nonfinite", "categorical_nulls": "null"})


# --------------------------------------------------------------------------- inverse


def inverse(engine: Engine, run: Run, *, fit_dir: str, input_path: str, output: str) -> None:
    """Invert a ``transformed_values`` table (wide or onehot, detected) into ``output/inverted_values``.

    Parameters
    ----------
    engine : Engine
    run : Run
    fit_dir, input_path, output : str
    """
    with run.timed("load_fit"):
        plans = load_plans(fit_dir)
        schema = _input_schema(input_path)
        layout = _detect_layout(schema, plans, input_path)
        # Output columns in the order the input holds them (the forward run's input order).
        position = {n: i for i, n in enumerate(schema.names)}
        plans = sorted(plans, key=lambda p: min(position[n] for n in kernels.encoded_schema([p], layout=layout) if n != ROW_ID))
    if ROW_ID not in schema.names:
        raise UserError(f"{input_path}: column '{ROW_ID}' is missing")
    try:
        kernels.decoded_schema(plans)
    except ValueError as exc:
        raise UserError(f"{fit_dir}: {exc}") from None
    stats = kernels.decode_stats(plans)
    path = fs.join(output, INVERTED_VALUES)
    run.progress(f"inverse of {len(plans)} column(s), {layout} layout, engine {engine.name}")
    with run.timed("inverse"):
        result = engine.map(input_path, functools.partial(kernels.decode, plans=plans, layout=layout),
                            [Sink(path, arrow_schema(kernels.decoded_schema(plans, flags=False)))],
                            columns=list(kernels.encoded_schema(plans, layout=layout)), reducer=_stats_reducer(stats))
    record(run.details, "inverse", engine, result)
    run.outputs[INVERTED_VALUES] = path
    run.details["layout"] = layout
    _report(run, stats, result.rows, result.partial or {}, totals={"clipped": "clipped", "unknown_categories": "unknown"})


# --------------------------------------------------------------------------- the stage


def needs_spark(settings: GmmTransformSettings, engine: str) -> bool:
    """Spark only schedules the kernels here: it is needed for the ``spark`` engine alone."""
    return engine == "spark"


def run(spark: SparkSession | None, settings: GmmTransformSettings, run: Run) -> None:
    """The ``gmm_transform`` stage: forward or inverse per ``settings``, on ``run.engine``."""
    if not settings.input:
        raise UserError("gmm_transform.input: no input table given (--input)")
    if settings.inverse:
        inverse(run.engine, run, fit_dir=settings.fit_dir, input_path=settings.input, output=settings.output)
    else:
        transform(run.engine, run, fit_dir=settings.fit_dir, input_path=settings.input, output=settings.output,
                  layout=settings.layout, seed=settings.seed, sampling=settings.sampling)
