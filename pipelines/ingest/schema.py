"""Target schemas: schema files and per-field typed casts (Spark SQL expressions).

Every check here is a Spark SQL expression, evaluated by Spark per row with no Python
per row. A value *fails* its type when it is present (non-null, not blank and not a null
token) but is not a valid literal of the type; the row then goes to quarantine with a
reason naming the field. Types are inferred from a sample by :mod:`pipelines.ingest.infer`
(strict, so that the inferred type keeps every sampled value as it was), with the same
literal rules.

- ``1,5`` and ``1e400`` are not numbers: an inferred column containing them is ``string``
  (the type that keeps every value); with an explicit numeric type they are quarantined
  (a finite literal that overflows fails with "out of range": infinity is kept only when
  the source says so);
- null tokens (``NA``, ``N/A``, ``null``, ... or the set given) are null in every column,
  typed or text, and never a failure;
- booleans: Spark's boolean literals with an explicit type.

Casting (an explicit or inferred type) is Spark's ``try_cast`` plus the two checks that
keep values from changing silently: finite literals that overflow, and dates that are not
ISO. Blank strings in a non-string column become null and are counted as ``empty``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import fs
from pipelines.errors import UserError
from pipelines.ingest.infer import DATE_RE, DECIMAL_RE, INT_RE, SPECIAL_FLOAT_RE, TIMESTAMP_RE, null_tokens

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_FRACTIONAL = (T.FloatType, T.DoubleType)
SUPPORTED_TYPES = (
    T.StringType, *_INTEGRAL, *_FRACTIONAL, T.DecimalType, T.BooleanType, T.DateType, T.TimestampType,
    T.TimestampNTZType,
)



class SchemaField(NamedTuple):
    """One column of a schema file: its source name, type and, optionally, its own null tokens."""

    name: str
    type: T.DataType
    null_values: tuple[str, ...] | None = None


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


def read_schema_file(path: str) -> list[SchemaField]:
    """Read a schema file: a Spark DDL string, JSON or YAML.

    Parameters
    ----------
    path : str
        ``.json``: a Spark ``StructType`` JSON, a ``{"column": "type"}`` object, or a list of
        ``{"name": ..., "type": ...}``; ``.yaml`` / ``.yml``: the same mapping or list;
        anything else: a DDL string such as ``id BIGINT, amount DOUBLE, day DATE``. In a
        mapping or list, a column may also name its own null tokens, replacing the run's
        set for it: ``amount: {type: double, null_values: ["-", "NA"]}`` or
        ``{"name": "amount", "type": "double", "null_values": ["-"]}``.

    Returns
    -------
    list of SchemaField
        In the file's order. Names are the *source* column names; ``null_values`` is None
        where the file does not set it.

    Raises
    ------
    UserError
        The file is missing or does not parse, a type is unknown or unsupported, a
        column's ``null_values`` is not a list of strings, or a column is listed twice.
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
        fields = [SchemaField(f.name, f.dataType) for f in struct.fields]
    if not fields:
        raise UserError(f"{path}: schema file lists no columns")
    seen: set[str] = set()
    for f in fields:
        if f.name in seen:
            raise UserError(f"{path}: column {f.name!r} is listed twice")
        seen.add(f.name)
        check_supported(f.type, where=f"{path}: column {f.name!r}")
    return fields


def _fields_from_data(data: Any, path: str) -> list[SchemaField]:
    if isinstance(data, Mapping) and data.get("type") == "struct" and "fields" in data:
        try:
            struct = T.StructType.fromJson(dict(data))
        except Exception:
            raise UserError(f"{path}: not a valid Spark StructType JSON") from None
        return [SchemaField(f.name, f.dataType) for f in struct.fields]
    if isinstance(data, Mapping):
        items = [(name, spec) if isinstance(spec, Mapping) else (name, {"type": spec}) for name, spec in data.items()]
    elif isinstance(data, list) and all(isinstance(d, Mapping) and {"name", "type"} <= set(d) for d in data):
        items = [(d["name"], {k: v for k, v in d.items() if k != "name"}) for d in data]
    else:
        raise UserError(f"{path}: schema file must be a mapping of column: type or a list of {{name, type}}")
    return [_field(str(name), spec, where=f"{path}: column {name!r}") for name, spec in items]


def _field(name: str, spec: Mapping[str, Any], *, where: str) -> SchemaField:
    unknown = sorted(set(spec) - {"type", "null_values"})
    if unknown or "type" not in spec:
        raise UserError(f"{where}: expected keys 'type' and optionally 'null_values', got {sorted(spec)}")
    tokens = spec.get("null_values")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise UserError(f"{where}: null_values must be a list of strings, got {tokens!r}")
    return SchemaField(name, parse_type(str(spec["type"]), where=where), None if tokens is None else tuple(tokens))


def _is_inf(value: Column) -> Column:
    return F.abs(value) == F.lit(float("inf"))


def _blank(value: Column) -> Column:
    return F.trim(value) == F.lit("")


def is_null_token(raw: Column, null_values: Sequence[str]) -> Column | None:
    """True where the text ``raw``, trimmed of spaces, is one of the tokens (None without tokens)."""
    tokens = null_tokens(null_values)
    return F.trim(raw).isin(*tokens) if tokens else None


def cast_expr(
    raw: Column, *, source_type: T.DataType, target: T.DataType, null_values: Sequence[str] = ()
) -> Column | None:
    """The typed value of a field (None when the source already has the target type and no token applies).

    Numbers and booleans are Spark's ``try_cast`` (so casting accepts what Spark accepts,
    e.g. ``" 42 "``, ``+1``, ``007``; inference is the stricter step). Dates and timestamps
    must also look like ISO dates, because Spark's cast turns ``2024`` into 2024-01-01.
    A null token (text sources) is null whatever the type, even one that would parse (``-999``).
    """
    token = is_null_token(raw, null_values) if isinstance(source_type, T.StringType) else None
    if source_type == target:
        cast = None if token is None else raw
    elif isinstance(source_type, T.StringType) and isinstance(target, T.DateType):
        cast = F.when(raw.rlike(DATE_RE), raw.try_cast(target))
    elif isinstance(source_type, T.StringType) and isinstance(target, (T.TimestampType, T.TimestampNTZType)):
        cast = F.when(raw.rlike(TIMESTAMP_RE), raw.try_cast(target))
    else:
        cast = raw.try_cast(target)
    return cast if token is None else F.when(~token, cast)


def check_field(
    raw: Column,
    *,
    name: str,
    source_type: T.DataType,
    target: T.DataType,
    cast: Column | None = None,
    null_values: Sequence[str] = (),
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
        :func:`cast_expr` of ``raw`` (with the same ``null_values``), when the caller
        computed it once in an earlier projection (the check refers to it several times);
        computed here otherwise.
    null_values : sequence of str
        Text that means null (string sources only): such a value is null, not a failure.
    """
    if cast is None:
        cast = cast_expr(raw, source_type=source_type, target=target, null_values=null_values)
    if source_type == target:
        return FieldCheck(raw if cast is None else cast, F.lit(None).cast("string"), F.lit(False))
    t = target.simpleString()
    if not isinstance(source_type, T.StringType):
        # Native source types (Parquet/Delta with a schema file): a failed cast is a failure.
        failed = raw.isNotNull() & cast.isNull()
        problem = F.when(failed, F.format_string(f"{name}: cannot cast %s to {t}", _quoted(raw.cast("string"))))
        return FieldCheck(cast, problem, failed)
    # Blank strings and null tokens are null values (counted), not failures.
    failed = cast.isNull() & raw.isNotNull() & ~_blank(raw)
    token = is_null_token(raw, null_values)
    if token is not None:
        failed = failed & ~token
    if isinstance(target, _FRACTIONAL):
        # Infinity only when the source says so; a finite literal beyond the range is not infinite.
        out_of_range = _is_inf(cast) & ~raw.rlike(SPECIAL_FLOAT_RE)
    elif isinstance(target, _INTEGRAL):
        out_of_range = failed & raw.rlike(INT_RE)
    elif isinstance(target, T.DecimalType):
        out_of_range = failed & raw.rlike(DECIMAL_RE)
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
