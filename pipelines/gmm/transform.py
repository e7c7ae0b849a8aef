"""The ``gmm_transform`` stage: fitted GMM normalisers applied per partition, and inverted.

Forward (``OUT`` = ``--output``)::

    input (Delta/Parquet: _row_id + fitted columns)
      -> kernels.encode per Arrow batch (Spark mapInArrow, or Polars streaming)
      -> OUT/transformed_values   wide or onehot, one row per _row_id
    input -> kernels.encode_long per batch (the same rows, unpivoted)
      -> OUT/feature_values       long, partitioned by column

With ``--layout long`` only ``feature_values`` is written (encode and unpivot in one
pass). The per-row flag columns of :func:`~pipelines.gmm.kernels.encode` (clipped,
NaN/inf, unknown category, reconstruction error) are aggregated while the first table
is written (Spark: ``DataFrame.observe``; Polars: per batch, in the streaming loop), then
dropped: no extra pass for the figures and nothing collected but the figures.

Inverse (``BACK`` = ``--output``, input = a ``transformed_values`` table, its layout
detected from its columns): ``kernels.decode`` per batch -> ``BACK/inverted_values``.

The same kernels run on both engines (:mod:`pipelines.partitions`) and the uniforms are
keyed by ``(seed, column, _row_id)``, so outputs are identical whatever the engine or
the partitioning. ``python -m pipelines.gmm.transform --engine polars ...`` runs the
Polars engine without starting Spark.
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from pipelines import delta, fs
from pipelines.errors import UserError
from pipelines.gmm import kernels
from pipelines.gmm.kernels import ROW_ID, ColumnPlan, Stat
from pipelines.gmm.model import models_from_rows
from pipelines.partitions import polars_map, spark_map
from pipelines.runs import JobArgumentParser, Run, add_config_flag, console

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import Config, GmmTransformSettings

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


# --------------------------------------------------------------------------- schemas


def _arrow(schema: Mapping[str, pl.DataType]) -> pa.Schema:
    return pl.DataFrame(schema=dict(schema)).to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def _spark_schema(schema: Mapping[str, pl.DataType]):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(_arrow(schema))


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# --------------------------------------------------------------------------- figures


class _PolarsStats:
    """Accumulates :class:`~pipelines.gmm.kernels.Stat` figures batch by batch (Polars engine)."""

    def __init__(self, stats: Sequence[Stat]) -> None:
        self.stats = list(stats)
        self.rows = 0
        self.values: dict[str, Any] = {}

    def add(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        self.values = kernels.combine_stats(self.stats, self.values, kernels.aggregate_stats(frame, self.stats))

    def result(self) -> tuple[int, dict[str, Any]]:
        return self.rows, self.values


def _observe(df: DataFrame, stats: Sequence[Stat]):
    """Attach the figures to ``df`` as observed metrics: computed while the data is written."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    exprs = [F.count(F.lit(1)).alias("rows")]
    for i, s in enumerate(stats):
        col = F.col(_quoted(s.source))
        if s.unless is not None:
            col = F.when(~F.col(_quoted(s.unless)), col)
        exprs.append((F.sum(col.cast("long")) if s.op == "sum" else F.max(col)).alias(str(i)))
    observation = Observation(JOB)
    observed = df.observe(observation, *exprs)

    def result() -> tuple[int, dict[str, Any]]:
        values = dict(observation.get)
        return int(values.pop("rows") or 0), values

    return observed, result


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
    spark: SparkSession | None,
    run: Run,
    *,
    fit_dir: str,
    input_path: str,
    output: str,
    layout: str = "wide",
    seed: int = 42,
    engine: str = "spark",
) -> None:
    """Transform ``input_path`` with the fit in ``fit_dir`` into ``output`` (see the module docstring).

    Parameters
    ----------
    spark : SparkSession or None
        Needed for ``engine="spark"`` only.
    run : Run
        Receives counts, figures, outputs and timings.
    fit_dir, input_path, output : str
    layout : {"wide", "onehot", "long"}
    seed : int
    engine : {"spark", "polars"}
    """
    with run.timed("load_fit"):
        plans = load_plans(fit_dir)
        plans = _order_plans(plans, _input_schema(input_path), input_path)
    encode_layout: kernels.Layout = "onehot" if layout == "onehot" else "wide"
    try:
        model_schema = kernels.encoded_schema(plans, layout=encode_layout)
        full_schema = kernels.encode_schema(plans, layout=encode_layout)
    except ValueError as exc:
        raise UserError(f"{fit_dir}: {exc}") from None
    stats = kernels.encode_stats(plans)
    encode = functools.partial(kernels.encode, plans=plans, seed=seed, layout=encode_layout)
    to_long = functools.partial(kernels.to_long, plans=plans, layout=encode_layout)
    # feature_values is recomputed from the narrow input rather than read back from the
    # wide/one-hot table: same rows (the sampling is keyed by _row_id), less I/O.
    encode_long = functools.partial(kernels.encode_long, plans=plans, seed=seed)
    tv_path, fv_path = fs.join(output, TRANSFORMED_VALUES), fs.join(output, FEATURE_VALUES)
    columns = [ROW_ID, *(p.column for p in plans)]
    run.progress(f"{len(plans)} fitted column(s): {', '.join(p.column for p in plans)}; layout {layout}; engine {engine}")

    if engine == "polars":
        acc = _PolarsStats(stats)

        def encode_and_count(batch: pl.DataFrame) -> pl.DataFrame:
            out = encode(batch)
            acc.add(out)
            return out

        if layout == "long":
            with run.timed("transform"):
                polars_map(input_path, lambda b: to_long(encode_and_count(b)), fv_path,
                           partition_by=["column"], columns=columns, schema=_arrow(kernels.LONG_SCHEMA))
        else:
            with run.timed("transform"):
                polars_map(input_path, lambda b: encode_and_count(b).select(list(model_schema)), tv_path,
                           columns=columns, schema=_arrow(model_schema))
            with run.timed("feature_values"):
                polars_map(input_path, encode_long, fv_path, partition_by=["column"], columns=columns,
                           schema=_arrow(kernels.LONG_SCHEMA))
        rows, values = acc.result()
    else:
        source = _read_spark(spark, input_path).select(*[_quoted(c) for c in columns])
        wide = spark_map(source, encode, _spark_schema(full_schema))
        wide, figures = _observe(wide, stats)
        long_schema = _spark_schema(kernels.LONG_SCHEMA)
        if layout == "long":
            with run.timed("transform"):
                delta.write_table(spark_map(wide, to_long, long_schema), fv_path, mode="overwrite", partition_by=["column"])
        else:
            with run.timed("transform"):
                delta.write_table(wide.select(*[_quoted(c) for c in model_schema]), tv_path, mode="overwrite")
            with run.timed("feature_values"):
                delta.write_table(spark_map(source, encode_long, long_schema), fv_path, mode="overwrite", partition_by=["column"])
        rows, values = figures()

    if layout != "long":
        run.outputs[TRANSFORMED_VALUES] = tv_path
    run.outputs[FEATURE_VALUES] = fv_path
    run.details["layout"] = layout
    _report(run, stats, rows, values, totals={
        "clipped": "clipped", "unknown_categories": "unknown", "null_or_nonfinite": "null_or_nonfinite",
        "nonfinite": "nonfinite", "categorical_nulls": "null"})


def _read_spark(spark: SparkSession, path: str) -> DataFrame:
    if delta.table_exists(path):
        return delta.read_table(spark, path)
    _input_schema(path)  # raises a UserError for a missing or unreadable path
    return spark.read.parquet(path)


# --------------------------------------------------------------------------- inverse


def inverse(
    spark: SparkSession | None,
    run: Run,
    *,
    fit_dir: str,
    input_path: str,
    output: str,
    engine: str = "spark",
) -> None:
    """Invert a ``transformed_values`` table (wide or onehot, detected) into ``output/inverted_values``.

    Parameters
    ----------
    spark : SparkSession or None
        Needed for ``engine="spark"`` only.
    run : Run
    fit_dir, input_path, output : str
    engine : {"spark", "polars"}
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
        out_schema = kernels.decoded_schema(plans)
    except ValueError as exc:
        raise UserError(f"{fit_dir}: {exc}") from None
    values_schema = kernels.decoded_schema(plans, flags=False)
    stats = kernels.decode_stats(plans)
    decode = functools.partial(kernels.decode, plans=plans, layout=layout)
    columns = list(kernels.encoded_schema(plans, layout=layout))
    path = fs.join(output, INVERTED_VALUES)
    run.progress(f"inverse of {len(plans)} column(s), {layout} layout, engine {engine}")

    with run.timed("inverse"):
        if engine == "polars":
            acc = _PolarsStats(stats)

            def decode_and_count(batch: pl.DataFrame) -> pl.DataFrame:
                out = decode(batch)
                acc.add(out)
                return out.select(list(values_schema))

            polars_map(input_path, decode_and_count, path, columns=columns, schema=_arrow(values_schema))
            rows, values = acc.result()
        else:
            source = _read_spark(spark, input_path).select(*[_quoted(c) for c in columns])
            back, figures = _observe(spark_map(source, decode, _spark_schema(out_schema)), stats)
            delta.write_table(back.select(*[_quoted(c) for c in values_schema]), path, mode="overwrite")
            rows, values = figures()
    run.outputs[INVERTED_VALUES] = path
    run.details["layout"] = layout
    _report(run, stats, rows, values, totals={"clipped": "clipped", "unknown_categories": "unknown"})


# --------------------------------------------------------------------------- entry points


def run_stage(spark: SparkSession | None, cfg: Config, run: Run) -> None:
    """The job's stage: forward or inverse per ``cfg.gmm_transform``."""
    s: GmmTransformSettings = cfg.gmm_transform
    if not s.input:
        raise UserError("gmm_transform.input: no input table given (--input)")
    if s.engine == "spark" and spark is None:
        raise UserError("gmm_transform.engine: 'spark' needs a SparkSession; use --engine polars")
    if s.inverse:
        inverse(spark, run, fit_dir=s.fit_dir, input_path=s.input, output=s.output, engine=s.engine)
    else:
        transform(spark, run, fit_dir=s.fit_dir, input_path=s.input, output=s.output,
                  layout=s.layout, seed=s.seed, engine=s.engine)


def build_parser(prog: str) -> JobArgumentParser:
    """Flags of ``gmm_transform``; each ``dest`` is a key of the ``gmm_transform`` config section."""
    parser = JobArgumentParser(prog=prog, description="Apply (or invert) fitted GMM normalisers, partition by partition.")
    parser.add_argument("--fit-dir", dest="fit_dir", metavar="DIR", help="a gmm_fit output (holds DIR/models)")
    parser.add_argument("--input", metavar="TABLE", help="Delta table or Parquet: bronze rows, or with --inverse a transformed_values table")
    parser.add_argument("--output", metavar="DIR", help="receives feature_values/transformed_values (or inverted_values) and _runs/")
    parser.add_argument("--layout", choices=["long", "wide", "onehot"], help="transformed_values layout (default wide; long writes only feature_values); "
                        "with --inverse the layout is detected from the input")
    parser.add_argument("--seed", type=int, help="seed of the per-row mode sampling (default 42)")
    parser.add_argument("--inverse", action="store_true", default=None, help="invert a transformed_values table")
    parser.add_argument("--engine", choices=["spark", "polars"], help="spark (default) or polars (no Spark)")
    add_config_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m pipelines.gmm.transform") -> int:
    """The ``gmm_transform`` job; with ``--engine polars`` it never starts Spark.

    Returns the exit code; the last stdout line is the run summary (as for every job).
    """
    from pipelines.runs import execute

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if (args.engine or "spark") == "spark":
        return execute(JOB, parser, argv, run_stage)
    from pipelines.config import load_config

    run: Run | None = None
    try:
        flags = {k: v for k, v in vars(args).items() if k != "config"}
        cfg = load_config(args.config, overrides={JOB: flags})
        run = Run(job=JOB, output=cfg.gmm_transform.output, params=cfg.gmm_transform.model_dump())
        run_stage(None, cfg, run)
        run.status, code = "succeeded", 0
    except UserError as exc:
        console(f"error: {exc}")
        if run is None:
            return UserError.exit_code
        run.status, run.error, code = "failed", str(exc), UserError.exit_code
    except Exception as exc:  # a bug: keep the traceback, still record the run (as runs.execute does)
        console(traceback.format_exc().rstrip())
        if run is None:
            return 1
        run.status, run.error, code = "failed", f"{type(exc).__name__}: {exc}", 1
    print(json.dumps(run.write_summary(), default=str), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
