"""Target schemas: schema files, inference from a sample, and per-field typed casts.

Every check here is a Spark SQL expression, evaluated by Spark per row with no Python
per row. A value *fails* its type when it is present (non-null and not blank) but is not a
valid literal of the type; the row then goes to quarantine with a reason naming the field.

Inference is strict, so that the inferred type keeps every sampled value as it was:

- integers: optional sign and digits, no leading zeros (``007`` is an identifier, kept as text;
  the same holds for floating point);
- floating point: decimal or exponent notation, or ``NaN`` / ``inf`` / ``Infinity`` with an
  optional sign, case-insensitive. A finite literal that overflows (``1e400``) is *not*
  silently turned into infinity: it fails with "out of range" (infinity is kept only when the
  source says so);
- ``1,5`` and ``N/A`` are not numbers: an inferred column containing them is ``string``
  (the type that keeps every value); with an explicit numeric type they are quarantined;
- booleans: ``true`` / ``false`` (inference); Spark's boolean literals with an explicit type;
- dates ``YYYY-MM-DD`` and ISO-8601 timestamps.

Casting (an explicit or inferred type) is Spark's ``try_cast`` plus the two checks that
keep values from changing silently: finite literals that overflow, and dates that are not
ISO. Blank strings in a non-string column become null and are counted as ``empty``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import fs
from pipelines.errors import UserError

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_FRACTIONAL = (T.FloatType, T.DoubleType)
SUPPORTED_TYPES = (
    T.StringType, *_INTEGRAL, *_FRACTIONAL, T.DecimalType, T.BooleanType, T.DateType, T.TimestampType,
    T.TimestampNTZType,
)

_INT_RE = r"^\s*[+-]?(0|[1-9][0-9]*)\s*$"
# No leading zeros ("007" is an identifier); "0.5" and ".5" are fine.
_DECIMAL_RE = r"^\s*[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
_SPECIAL_FLOAT_RE = r"^\s*[+-]?(?i:nan|inf|infinity)\s*$"
_DATE_RE = r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}\s*$"
_TIMESTAMP_RE = (
    r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
    r"\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)?\s*$"
)
_BOOL_WORDS = ("true", "false")

# Inference tries these in order and takes the first that accepts every sampled value.
INFERENCE_ORDER: tuple[T.DataType, ...] = (
    T.LongType(), T.DoubleType(), T.BooleanType(), T.DateType(), T.TimestampType(),
)


@dataclass(frozen=True)
class FieldCheck:
    """The typed value of one field and, when it fails, why (both Spark columns)."""

    value: Column
    problem: Column  # a string naming the field and the problem, or null when the value is fine
    failed: Column  # cheap boolean: true exactly when ``problem`` is not null


def parse_type(text: str, *, where: str) -> T.DataType:
    """Parse a type name (``double``, ``bigint``, ``decimal(10,2)``, ...) into a supported Spark type."""
    try:
        dtype = T.DataType.fromDDL(str(text))
    except Exception:
        raise UserError(f"{where}: unknown type {text!r}") from None
    check_supported(dtype, where=where)
    return dtype


def check_supported(dtype: T.DataType, *, where: str) -> None:
    if not isinstance(dtype, SUPPORTED_TYPES):
        names = "string, tinyint, smallint, int, bigint, float, double, decimal(p,s), boolean, date, timestamp"
        raise UserError(f"{where}: type {dtype.simpleString()} is not supported for ingest (use one of: {names})")


def read_schema_file(path: str) -> list[tuple[str, T.DataType]]:
    """Read a schema file: a Spark DDL string, JSON or YAML.

    Parameters
    ----------
    path : str
        ``.json``: a Spark ``StructType`` JSON, a ``{"column": "type"}`` object, or a list of
        ``{"name": ..., "type": ...}``; ``.yaml`` / ``.yml``: the same mapping or list;
        anything else: a DDL string such as ``id BIGINT, amount DOUBLE, day DATE``.

    Returns
    -------
    list of (column name, Spark type)
        In the file's order. Names are the *source* column names.

    Raises
    ------
    UserError
        The file is missing or does not parse, a type is unknown or unsupported, or a
        column is listed twice.
    """
    try:
        text = fs.read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read schema file ({exc.__class__.__name__})") from None
    suffix = Path(fs.local_path(path)).suffix.lower()
    if suffix in (".json", ".yaml", ".yml"):
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: schema file does not parse: {str(exc).splitlines()[0]}") from None
        fields = _fields_from_data(data, path)
    else:
        try:
            struct = T.DataType.fromDDL(text.strip())
        except Exception:
            raise UserError(f"{path}: schema file is not a valid DDL schema (e.g. 'id BIGINT, x DOUBLE')") from None
        if not isinstance(struct, T.StructType):
            raise UserError(f"{path}: schema file must list columns, e.g. 'id BIGINT, x DOUBLE'")
        fields = [(f.name, f.dataType) for f in struct.fields]
    if not fields:
        raise UserError(f"{path}: schema file lists no columns")
    seen: set[str] = set()
    for name, dtype in fields:
        if name in seen:
            raise UserError(f"{path}: column {name!r} is listed twice")
        seen.add(name)
        check_supported(dtype, where=f"{path}: column {name!r}")
    return fields


def _fields_from_data(data: Any, path: str) -> list[tuple[str, T.DataType]]:
    if isinstance(data, Mapping) and data.get("type") == "struct" and "fields" in data:
        try:
            struct = T.StructType.fromJson(dict(data))
        except Exception:
            raise UserError(f"{path}: not a valid Spark StructType JSON") from None
        return [(f.name, f.dataType) for f in struct.fields]
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, list) and all(isinstance(d, Mapping) and {"name", "type"} <= set(d) for d in data):
        items = [(d["name"], d["type"]) for d in data]
    else:
        raise UserError(f"{path}: schema file must be a mapping of column: type or a list of {{name, type}}")
    return [(str(name), parse_type(str(dtype), where=f"{path}: column {name!r}")) for name, dtype in items]


def _is_inf(value: Column) -> Column:
    return F.abs(value) == F.lit(float("inf"))


def _blank(value: Column) -> Column:
    return F.trim(value) == F.lit("")


def _infers_as(raw: Column, dtype: T.DataType) -> Column:
    """True when the (present, non-blank) string ``raw`` is a plain literal of ``dtype``."""
    cast = raw.try_cast(dtype)
    if isinstance(dtype, _INTEGRAL):
        return raw.rlike(_INT_RE) & cast.isNotNull()
    if isinstance(dtype, _FRACTIONAL):
        return (raw.rlike(_DECIMAL_RE) & cast.isNotNull() & ~_is_inf(cast)) | raw.rlike(_SPECIAL_FLOAT_RE)
    if isinstance(dtype, T.DecimalType):
        return raw.rlike(_DECIMAL_RE) & cast.isNotNull()
    if isinstance(dtype, T.BooleanType):
        return F.lower(F.trim(raw)).isin(*_BOOL_WORDS)
    if isinstance(dtype, T.DateType):
        return raw.rlike(_DATE_RE) & cast.isNotNull()
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return raw.rlike(_TIMESTAMP_RE) & cast.isNotNull()
    return F.lit(True)


def infer_types(sample: DataFrame, columns: Sequence[str]) -> dict[str, T.DataType]:
    """Infer, per string column of ``sample``, the narrowest type that keeps every value.

    One aggregation over the sample counts, per column and candidate type, the present
    values that are not valid literals of that type; the first candidate of
    :data:`INFERENCE_ORDER` with a zero count wins, else ``string``. A column with no
    present value is ``string``.

    Parameters
    ----------
    sample : DataFrame
        String columns (a bounded sample of the source).
    columns : sequence of str
        The columns to infer.

    Returns
    -------
    dict of column -> Spark type
    """
    aggs = []
    for c in columns:
        raw = F.col(c)
        present = raw.isNotNull() & ~_blank(raw)
        aggs.append(F.count_if(present).alias(f"{c}\x00present"))
        for i, dtype in enumerate(INFERENCE_ORDER):
            aggs.append(F.count_if(present & ~_infers_as(raw, dtype)).alias(f"{c}\x00{i}"))
    if not aggs:
        return {}
    row = sample.agg(*aggs).first().asDict()
    inferred: dict[str, T.DataType] = {}
    for c in columns:
        inferred[c] = T.StringType()
        if row[f"{c}\x00present"] == 0:
            continue
        for i, dtype in enumerate(INFERENCE_ORDER):
            if row[f"{c}\x00{i}"] == 0:
                inferred[c] = dtype
                break
    return inferred


def cast_expr(raw: Column, *, source_type: T.DataType, target: T.DataType) -> Column | None:
    """The typed value of a field (None when the source already has the target type).

    Numbers and booleans are Spark's ``try_cast`` (so casting accepts what Spark accepts,
    e.g. ``" 42 "``, ``+1``, ``007``; inference is the stricter step). Dates and timestamps
    must also look like ISO dates, because Spark's cast turns ``2024`` into 2024-01-01.
    """
    if source_type == target:
        return None
    if isinstance(source_type, T.StringType) and isinstance(target, T.DateType):
        return F.when(raw.rlike(_DATE_RE), raw.try_cast(target))
    if isinstance(source_type, T.StringType) and isinstance(target, (T.TimestampType, T.TimestampNTZType)):
        return F.when(raw.rlike(_TIMESTAMP_RE), raw.try_cast(target))
    return raw.try_cast(target)


def check_field(
    raw: Column, *, name: str, source_type: T.DataType, target: T.DataType, cast: Column | None = None
) -> FieldCheck:
    """The typed value of one field and its problem (null when fine), as Spark columns.

    Parameters
    ----------
    raw : Column
        The source value (a string for CSV/JSON; the native type for Parquet/Delta).
    name : str
        The (safe) column name used in the reason.
    source_type, target : DataType
        The type ``raw`` has and the type the bronze column gets.
    cast : Column, optional
        :func:`cast_expr` of ``raw``, when the caller computed it once in an earlier
        projection (the check refers to it several times); computed here otherwise.
    """
    if source_type == target:
        return FieldCheck(raw, F.lit(None).cast("string"), F.lit(False))
    if cast is None:
        cast = cast_expr(raw, source_type=source_type, target=target)
    t = target.simpleString()
    if not isinstance(source_type, T.StringType):
        # Native source types (Parquet/Delta with a schema file): a failed cast is a failure.
        failed = raw.isNotNull() & cast.isNull()
        problem = F.when(failed, F.format_string(f"{name}: cannot cast %s to {t}", _quoted(raw.cast("string"))))
        return FieldCheck(cast, problem, failed)
    # Blank strings are null values (counted as empty), not failures.
    failed = cast.isNull() & raw.isNotNull() & ~_blank(raw)
    if isinstance(target, _FRACTIONAL):
        # Infinity only when the source says so; a finite literal beyond the range is not infinite.
        out_of_range = _is_inf(cast) & ~raw.rlike(_SPECIAL_FLOAT_RE)
    elif isinstance(target, _INTEGRAL):
        out_of_range = failed & raw.rlike(_INT_RE)
    elif isinstance(target, T.DecimalType):
        out_of_range = failed & raw.rlike(_DECIMAL_RE)
    else:
        out_of_range = F.lit(False)
    # The quoted value appears once, inside the failing branch: Spark's common-subexpression
    # elimination would otherwise compute it (a regex replace) for every row.
    head = F.when(out_of_range, F.lit(f"{name}: value ")).when(failed, F.lit(f"{name}: cannot parse "))
    tail = F.when(out_of_range, F.lit(f" out of range for {t}")).otherwise(F.lit(f" as {t}"))
    return FieldCheck(cast, F.when(head.isNotNull(), F.concat(head, _quoted(raw), tail)), out_of_range | failed)


def _quoted(value: Column, limit: int = 40) -> Column:
    """``'value'`` for a reason text, cut to ``limit`` characters so a reason stays one short line."""
    short = F.when(F.length(value) > limit, F.concat(F.substring(value, 1, limit), F.lit("..."))).otherwise(value)
    return F.concat(F.lit("'"), F.regexp_replace(short, r"[\r\n]", " "), F.lit("'"))
