"""The tokenize stage: global bins fitted in Spark, tokens written per partition.

Tokenising (``--input TABLE --columns a,b --output OUT``), three passes over the input:

1. **Edges**, one Spark aggregation for all columns over the finite values (null, NaN
   and +-inf excluded): exact min and max, and either ``percentile_approx`` at
   ``k / bins`` (``quantile``) or ``mean(|x|)`` (``uniform``). Duplicate quantile
   edges (heavy ties) collapse, giving fewer effective bins; see
   :func:`pipelines.tokenize.kernels.quantile_edges`.
2. **Bin statistics**, one Spark pass once the edges are known: the tokenising kernel
   runs per partition and Spark aggregates count, sum (exact, in fixed point) and sum
   of squares of the offset of each value in its bin per (column, token, out-of-range flag). This gives the stored bin
   means, the reserved-token and out-of-range counts and the reconstruction RMSE with
   bin means and with bin centres, without collecting any rows.
3. **Tokens**: the kernel again, written to ``OUT/tokens`` by Spark (``--engine
   spark``) or streamed by Polars without Spark (``--engine polars``).

Quantile accuracy: ``percentile_approx`` runs with ``accuracy = ceil(1 / relative_error)``;
each inner edge is a value of the column whose rank is within
``relative_error * n_finite`` of the target rank ``k / bins * n_finite``
(Greenwald-Khanna). The result is exact, and then independent of the partitioning,
when ``relative_error * n_finite`` is below about 1/2; otherwise the edge chosen
within that rank window can depend on how the input is partitioned. The minimum and
maximum are always exact.

Detokenising (``--detokenize --tokenizer OUT/tokenizer --input OUT/tokens --output
BACK``) is one pass of the detokenising kernel into ``BACK/detokenized`` plus one
aggregation over the tokens that counts reserved and invalid tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from pipelines import delta, fs
from pipelines.columns import ROW_ID, quote
from pipelines.columns import default_columns as _default_columns
from pipelines.engine import Engine, Reducer, Sink, arrow_schema, record
from pipelines.errors import UserError
from pipelines.tokenize import kernels as K

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from pipelines.config import TokenizeSettings
    from pipelines.runs import Run

TOKENIZER_SCHEMA = pl.Schema(
    {
        "column": pl.String,
        "bin": pl.Int32,
        "lower": pl.Float64,
        "upper": pl.Float64,
        "mean": pl.Float64,
        "count": pl.Int64,
        "method": pl.String,
        "n_bins": pl.Int32,
    }
)
_INF = float("inf")


def needs_spark(settings: TokenizeSettings, engine: str) -> bool:
    """The edges are fitted in Spark; detokenising needs it only for the ``spark`` engine."""
    return not settings.detokenize or engine == "spark"


def run(spark: SparkSession | None, settings: TokenizeSettings, run: Run) -> None:
    """The ``tokenize`` job: tokenise (fit + tokens) or, with ``detokenize``, map tokens back."""
    if settings.detokenize:
        _run_detokenize(run.engine, settings, run)
    else:
        _run_tokenize(spark, settings, run)


# --------------------------------------------------------------------------- helpers


def _finite(name: str) -> Column:
    """The column as double, null where it is null, NaN or +-inf (NaN compares above inf in Spark)."""
    from pyspark.sql import functions as F

    x = F.col(quote(name)).cast("double")
    return F.when(F.abs(x) < F.lit(_INF), x)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _check_columns(schema: pa.Schema, columns: Sequence[str], where: str) -> None:
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if list(columns).count(c) > 1})
        raise UserError(f"--columns: duplicate column(s) {dup}")
    fields = {f.name: f.type for f in schema}
    if ROW_ID not in fields:
        raise UserError(f"{where}: no {ROW_ID} column (tables from the ingest job have one)")
    for name in columns:
        if name == ROW_ID:
            raise UserError(f"--columns: {ROW_ID} is the row key and cannot be tokenised")
        if name not in fields:
            known = ", ".join(n for n in fields if n != ROW_ID)
            raise UserError(f"{where}: unknown column '{name}' (columns: {known})")
        if not _is_numeric(fields[name]):
            raise UserError(f"{where}: column '{name}' is {fields[name]}, not numeric")


def default_columns(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """Every numeric column not starting with ``_`` (row id and ingest metadata), and the others."""
    numeric = _default_columns((f.name, _is_numeric(f.type)) for f in schema)
    return numeric, [f.name for f in schema if not f.name.startswith("_") and f.name not in numeric]


def _tokens_schema(columns: Sequence[str], dtype: pl.DataType) -> pa.Schema:
    return arrow_schema({ROW_ID: pl.Int64, **{c: dtype for c in columns}})


# --------------------------------------------------------------------------- fitting


def fit_edges(
    df: DataFrame,
    columns: Sequence[str],
    *,
    n_bins: int,
    method: Literal["quantile", "uniform"] = "quantile",
    relative_error: float = 1e-4,
) -> tuple[list[K.ColumnBins], dict[str, dict[str, Any]]]:
    """Fit each column's bin edges over the whole DataFrame in one Spark aggregation.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    columns : list of str
        Numeric columns.
    n_bins : int
        Requested bins per column, >= 2.
    method : {"quantile", "uniform"}
    relative_error : float
        Rank error of the approximate quantiles, in (0, 1); ``percentile_approx`` runs
        with ``accuracy = ceil(1 / relative_error)``.

    Returns
    -------
    bins : list of ColumnBins
        Edges only (means come from :func:`fit_bin_statistics`).
    info : dict of column -> dict
        ``finite`` count, ``min``, ``max``, ``effective_bins``, ``collapsed_edges`` and,
        for ``uniform``, ``scale``; for ``quantile``, ``rank_error`` (in rows).

    Raises
    ------
    UserError
        A column has no finite value.
    """
    from pyspark.sql import functions as F

    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    if method not in ("quantile", "uniform"):
        raise ValueError(f"method must be 'quantile' or 'uniform', got {method!r}")
    if not 0 < relative_error < 1:
        raise ValueError(f"relative_error must be in (0, 1), got {relative_error}")
    accuracy = math.ceil(1.0 / relative_error)
    if accuracy > 2**31 - 1:
        raise ValueError(f"relative_error must be >= {1 / (2**31 - 1):.3g}, got {relative_error}")
    probabilities = K.quantile_probabilities(n_bins)
    aggs = []
    for i, name in enumerate(columns):
        x = _finite(name)
        aggs += [F.count(x).alias(f"n{i}"), F.min(x).alias(f"lo{i}"), F.max(x).alias(f"hi{i}")]
        if method == "quantile":
            aggs.append(F.percentile_approx(x, probabilities, accuracy).alias(f"q{i}"))
        else:
            aggs.append(F.avg(F.abs(x)).alias(f"s{i}"))
    row = df.agg(*aggs).first()  # one row: a few numbers per column

    bins, info = [], {}
    for i, name in enumerate(columns):
        finite = int(row[f"n{i}"])
        if finite == 0:
            raise UserError(f"column '{name}': no finite values to fit bins on (all null, NaN or infinite)")
        lo, hi = float(row[f"lo{i}"]), float(row[f"hi{i}"])
        col_info: dict[str, Any] = {"finite": finite, "min": lo, "max": hi}
        if method == "quantile":
            edges = K.quantile_edges(lo, row[f"q{i}"], hi)
            col_info["rank_error"] = relative_error * finite
        else:
            scale = K.uniform_scale(row[f"s{i}"])
            edges = K.uniform_edges(n_bins, scale)
            col_info["scale"] = scale
        col_info["effective_bins"] = edges.size - 1
        col_info["collapsed_edges"] = n_bins - (edges.size - 1)
        bins.append(K.ColumnBins(name, edges))
        info[name] = col_info
    return bins, info


def _merge_partials(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """Two :func:`~pipelines.tokenize.kernels.fit_partial_kernel` results added up per (column, token, flag)."""
    return (
        pl.concat([a, b]).group_by("col", "token", "oor", maintain_order=True)
        .agg(pl.col("n").sum(), pl.col("fixed").sum(), pl.col("s").sum(), pl.col("ss").sum())
    )


def fit_bin_statistics(engine: Engine, source: str, bins: Sequence[K.ColumnBins]) -> dict[str, dict[str, np.ndarray]]:
    """Per-bin statistics in one pass over ``source``'s files, given the edges.

    Parameters
    ----------
    engine : Engine
        Runs the pass (a reduce of :func:`~pipelines.tokenize.kernels.fit_partial_kernel`).
    source : str
        The table; holds the columns of ``bins``.
    bins : list of ColumnBins

    Returns
    -------
    dict of column -> dict of arrays
        ``count``, ``sum_diff``, ``sum_sq_diff`` of shape (n_bins,) (finite values;
        offsets in their bin, see :func:`~pipelines.tokenize.kernels.fit_stats_kernel`;
        ``sum_diff`` of in-range values is summed exactly, so it does not depend on the
        files); ``reserved`` of shape (4,) (tokens for null, NaN, -inf, +inf);
        ``below`` and ``above`` (out-of-range counts, shape (1,)).
    """
    # Each batch is reduced to its per-(column, token, flag) sums in its task; the driver
    # adds up the units' sums. In-range offsets are summed exactly in fixed point (64-bit
    # integer sums do not depend on the order of the rows, so neither do the bin means);
    # the unbounded offsets of out-of-range values (uniform method) as doubles.
    result = engine.reduce(source, Reducer(K.fit_partial_kernel(bins), _merge_partials),
                           columns=[b.column for b in bins])
    rows = result.partial.to_dicts() if result.partial is not None else []  # at most columns x (bins + 4) x 3 rows
    out = {
        b.column: {
            "count": np.zeros(b.n_bins, np.int64),
            "sum_diff": np.zeros(b.n_bins),
            "sum_sq_diff": np.zeros(b.n_bins),
            "reserved": np.zeros(len(K.RESERVED), np.int64),
            "below": np.zeros(1, np.int64),
            "above": np.zeros(1, np.int64),
        }
        for b in bins
    }
    for r in rows:
        b = bins[r["col"]]
        acc = out[b.column]
        if r["token"] >= b.n_bins:
            acc["reserved"][r["token"] - b.n_bins] += r["n"]
            continue
        acc["count"][r["token"]] += r["n"]
        acc["sum_diff"][r["token"]] += r["fixed"] / K.OFFSET_SCALE if r["oor"] == 0 else r["s"]
        acc["sum_sq_diff"][r["token"]] += r["ss"]
        if r["oor"]:
            acc["below" if r["oor"] < 0 else "above"][0] += r["n"]
    return out


def with_means(bins: Sequence[K.ColumnBins], stats: Mapping[str, Mapping[str, np.ndarray]]) -> list[K.ColumnBins]:
    """The bins with their fit means (:func:`~pipelines.tokenize.kernels.bin_means`)."""
    return [
        K.ColumnBins(b.column, b.edges, K.bin_means(b, stats[b.column]["count"], stats[b.column]["sum_diff"])) for b in bins
    ]


def tokenizer_table(
    bins: Sequence[K.ColumnBins], stats: Mapping[str, Mapping[str, np.ndarray]], *, method: str
) -> pl.DataFrame:
    """The ``tokenizer`` table: one row per (column, bin) with its bounds, mean and count."""
    parts = []
    for b in bins:
        n = b.n_bins
        parts.append(
            pl.DataFrame(
                {
                    "column": [b.column] * n,
                    "bin": np.arange(n, dtype=np.int32),
                    "lower": b.edges[:-1],
                    "upper": b.edges[1:],
                    "mean": b.means,
                    "count": stats[b.column]["count"],
                    "method": [method] * n,
                    "n_bins": np.full(n, n, dtype=np.int32),
                },
                schema=TOKENIZER_SCHEMA,
            ).with_columns(pl.col("mean").fill_nan(None))
        )
    return pl.concat(parts)


def read_tokenizer(path: str, columns: Sequence[str] | None = None, *, spark: SparkSession | None = None) -> list[K.ColumnBins]:
    """Read a ``tokenizer`` table into ColumnBins, in the order of ``columns``.

    Parameters
    ----------
    path : str
        The ``OUT/tokenizer`` Delta table.
    columns : list of str, optional
        Default: every column of the table.
    spark : SparkSession, optional
        Read with Spark (the table's backend, e.g. native Delta on Databricks); without
        it Polars reads the table (no Spark). Either way only the small table
        (columns x bins rows) comes to the driver.

    Raises
    ------
    UserError
        Not a tokenizer table, an unknown column, or bins that are not 0 .. n_bins - 1.
    """
    if spark is not None:
        df = delta.read_table(spark, path)
        names = df.columns
    else:
        lazy = delta.scan_table(path)
        names = lazy.collect_schema().names()
    missing = [c for c in TOKENIZER_SCHEMA.names() if c not in names]
    if missing:
        raise UserError(f"{path}: not a tokenizer table (missing columns {missing})")
    if spark is not None:
        table = pl.from_arrow(df.select(*TOKENIZER_SCHEMA.names()).toArrow())  # small: columns x bins rows
    else:
        table = lazy.select(TOKENIZER_SCHEMA.names()).collect()  # small: columns x bins rows
    table = table.sort("column", "bin")
    known = table["column"].unique(maintain_order=True).to_list()
    if not known:
        raise UserError(f"{path}: tokenizer table is empty")
    wanted = list(columns) if columns else known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise UserError(f"{path}: unknown column '{unknown[0]}' (tokenizer columns: {', '.join(known)})")
    result = []
    for name in wanted:
        part = table.filter(pl.col("column") == name)
        n = int(part["n_bins"][0])
        if part["bin"].to_list() != list(range(n)):
            raise UserError(f"{path}: column '{name}' has bins that are not 0 .. {n - 1}")
        edges = np.append(part["lower"].to_numpy(), part["upper"][-1])
        means = part["mean"].fill_null(float("nan")).to_numpy()
        try:
            result.append(K.ColumnBins(name, edges, means))
        except ValueError as exc:
            raise UserError(f"{path}: {exc}") from None
    return result


# --------------------------------------------------------------------------- applying


def _token_conditions(token: pl.Expr, n_bins: int) -> dict[str, pl.Expr]:
    """Conditions per token class."""
    conditions = {name: token == n_bins + offset for offset, name in enumerate(K.RESERVED)}
    conditions["invalid"] = token.is_null() | (token < 0) | (token >= n_bins + len(K.RESERVED))
    return conditions


def token_classes(bins: Sequence[K.ColumnBins]) -> Reducer:
    """Reserved and invalid token counts per column, as a :class:`~pipelines.engine.Reducer` over token rows."""
    exprs = [cond.sum().alias(f"{b.column}\0{name}") for b in bins
             for name, cond in _token_conditions(pl.col(b.column), b.n_bins).items()]

    def partial(frame: pl.DataFrame) -> dict[str, int]:
        return {k: int(v or 0) for k, v in frame.select(exprs).row(0, named=True).items()}

    def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: a[k] + b[k] for k in a}

    return Reducer(partial, merge)


def _nest(counts: Mapping[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        col, name = key.split("\0")
        out.setdefault(col, {})[name] = value
    return out


# --------------------------------------------------------------------------- the job


def _require(value: Any, flag: str) -> Any:
    if value is None:
        raise UserError(f"{flag} is required")
    return value


def _run_tokenize(spark: SparkSession, s: TokenizeSettings, run: Run) -> None:
    source = _require(s.input, "--input")
    engine = run.engine
    schema = delta.table_schema(source)
    columns = s.columns
    if columns is None:
        columns, skipped = default_columns(schema)
        if not columns:
            raise UserError(f"{source}: no numeric column to tokenise (pass --columns)")
        run.progress(f"no --columns: tokenising every numeric column {columns}")
        if skipped:
            run.warn(f"no --columns: non-numeric columns not tokenised: {skipped}")
        run.details["default_columns"] = columns
    _check_columns(schema, columns, source)
    dtype = K.token_dtype(s.bins)
    tokenizer_path, tokens_path = fs.join(s.output, "tokenizer"), fs.join(s.output, "tokens")

    with run.timed("fit_edges"):
        run.progress(f"fitting {s.method} edges of {len(columns)} column(s), {s.bins} bins")
        df = delta.read_table(spark, source)
        bins, info = fit_edges(df, columns, n_bins=s.bins, method=s.method, relative_error=s.relative_error)
    with run.timed("fit_bins"):
        stats = fit_bin_statistics(engine, source, bins)
        bins = with_means(bins, stats)
        table = tokenizer_table(bins, stats, method=s.method).to_arrow(compat_level=pl.CompatLevel.oldest())
        delta.write_table(spark.createDataFrame(table), tokenizer_path, mode="overwrite")
    with run.timed("tokenize"):
        run.progress(f"writing tokens with engine={engine.name}")
        result = engine.map(source, K.tokenize_kernel(bins, dtype=dtype), [Sink(tokens_path, _tokens_schema(columns, dtype))],
                            columns=[ROW_ID, *columns])
    record(run.details, "tokenize", engine, result)

    per_column: dict[str, dict[str, Any]] = {}
    for b in bins:
        st, inf = stats[b.column], info[b.column]
        sse_mean, sse_centre = K.reconstruction_sse(b, st["count"], st["sum_diff"], st["sum_sq_diff"])
        finite = int(st["count"].sum())
        per_column[b.column] = {
            **inf,
            "rows": finite + int(st["reserved"].sum()),
            "out_of_range": {"below": int(st["below"][0]), "above": int(st["above"][0])},
            "reserved_tokens": {name: int(v) for name, v in zip(K.RESERVED, st["reserved"], strict=True)},
            "empty_bins": int((st["count"] == 0).sum()),
            "rmse_mean": math.sqrt(sse_mean / finite),
            "rmse_centre": math.sqrt(sse_centre / finite),
        }
        if inf["collapsed_edges"]:
            run.warn(
                f"column '{b.column}': ties collapsed {inf['collapsed_edges']} duplicate edge(s); "
                f"{b.n_bins} effective bins of {s.bins}"
            )
    rows = next(iter(per_column.values()))["rows"]
    run.counts.update(
        rows=rows,
        columns=len(columns),
        values=rows * len(columns),
        out_of_range=sum(c["out_of_range"]["below"] + c["out_of_range"]["above"] for c in per_column.values()),
        reserved_tokens=sum(sum(c["reserved_tokens"].values()) for c in per_column.values()),
    )
    run.outputs.update(tokenizer=tokenizer_path, tokens=tokens_path)
    run.details.update(
        token_dtype=str(dtype),
        token_layout="0..n_bins-1 bins; n_bins null; n_bins+1 NaN; n_bins+2 -inf; n_bins+3 +inf",
        columns=per_column,
    )


def _run_detokenize(engine: Engine, s: TokenizeSettings, run: Run) -> None:
    tokenizer_path = _require(s.tokenizer, "--tokenizer")
    source = _require(s.input, "--input")
    out_path = fs.join(s.output, "detokenized")
    bins = read_tokenizer(tokenizer_path, s.columns, spark=engine.spark)
    types = {f.name: f.type for f in delta.table_schema(source)}
    if s.columns is None:  # the tokens table's column order (the tokenizer table's is alphabetical)
        position = {name: i for i, name in enumerate(types)}
        bins.sort(key=lambda b: position.get(b.column, len(position)))
    names = [b.column for b in bins]
    for name in (ROW_ID, *names):
        if name not in types:
            raise UserError(f"{source}: no column '{name}' (the tokens table must hold {ROW_ID} and the tokenizer's columns)")
        if name != ROW_ID and not pa.types.is_integer(types[name]):
            raise UserError(f"{source}: column '{name}' is {types[name]}, not integer tokens")

    with run.timed("detokenize"):
        run.progress(f"detokenising {len(names)} column(s) to bin {s.value}s with engine={engine.name}")
        # One pass: the token classes are counted on the tokens, the sink gets their values.
        values = Sink(out_path, arrow_schema({ROW_ID: pl.Int64, **{n: pl.Float64 for n in names}}),
                      select=K.detokenize_kernel(bins, value=s.value))
        result = engine.map(source, None, [values], columns=[ROW_ID, *names], reducer=token_classes(bins))
    record(run.details, "detokenize", engine, result)
    rows, classes = result.rows, _nest(result.partial or {f"{n}\0{k}": 0 for n in names for k in (*K.RESERVED, "invalid")})

    invalid = {c: v["invalid"] for c, v in classes.items() if v["invalid"]}
    if invalid:
        run.warn(f"tokens outside the vocabulary (or null) became null: {invalid}")
    run.counts.update(
        rows=rows,
        columns=len(names),
        values=rows * len(names),
        reserved_tokens=sum(v[name] for v in classes.values() for name in K.RESERVED),
        invalid_tokens=sum(v["invalid"] for v in classes.values()),
    )
    run.outputs.update(detokenized=out_path)
    run.details.update(columns={c: {"n_bins": b.n_bins, **classes[c]} for c, b in zip(names, bins, strict=True)})
