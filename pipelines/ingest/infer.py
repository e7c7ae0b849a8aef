"""Type inference on a bounded sample of text values (a pure Polars kernel, no Spark).

The sample (at most ``infer_sample_rows`` rows of the string columns) is brought to the
driver once as Arrow; inferring there costs milliseconds, where one Spark aggregation of
every candidate check per column cost seconds of query compilation, the largest fixed
cost of a small ingest (benchmarks/RESULTS.md, "Small data").

The literal rules are the regular expressions below, shared with the Spark casts in
:mod:`pipelines.ingest.schema` (whitespace is spelled ``[ \\t\\n\\x0B\\f\\r]``, Java's
``\\s``, so Java and Rust regexes read them alike). A column gets the first type of
:data:`INFERENCE_ORDER` that every present value is a plain literal of, else ``string``:

- integers: optional sign and digits, no leading zeros (``007`` is an identifier), within int64;
- floating point: decimal or exponent notation that stays finite, or ``NaN`` / ``inf`` /
  ``Infinity`` with an optional sign, case-insensitive (``1e400`` is not silently infinite);
- booleans: ``true`` / ``false``; dates ``YYYY-MM-DD`` (a real calendar day); ISO-8601
  timestamps (valid day, hour, minute, second and offset).

A value is *present* when it is not null, not blank (spaces only) and not a null token
(compared after trimming spaces): so ``NA`` among numbers leaves the column numeric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

_WS = r"[ \t\n\x0B\f\r]"
INT_RE = rf"^{_WS}*[+-]?(0|[1-9][0-9]*){_WS}*$"
# No leading zeros ("007" is an identifier); "0.5" and ".5" are fine.
DECIMAL_RE = rf"^{_WS}*[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?{_WS}*$"
SPECIAL_FLOAT_RE = rf"^{_WS}*[+-]?(?i:nan|inf|infinity){_WS}*$"
DATE_RE = rf"^{_WS}*[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}{_WS}*$"
TIMESTAMP_RE = (
    rf"^{_WS}*([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})([T ]([0-9]{{2}}):([0-9]{{2}})(:([0-9]{{2}})(\.[0-9]{{1,9}})?)?)?"
    rf"{_WS}*(Z|[+-]([0-9]{{2}})(:?([0-9]{{2}}))?)?{_WS}*$"
)
BOOL_WORDS = ("true", "false")
_WS_CHARS = " \t\n\x0b\x0c\r"

# Spark type names, tried in this order; the first that accepts every present value wins.
INFERENCE_ORDER = ("bigint", "double", "boolean", "date", "timestamp")


def null_tokens(values: Sequence[str]) -> tuple[str, ...]:
    """The tokens matched against values: ``values`` without the empty string, in order, unique.

    The empty string needs no matching: an empty CSV field is null already (Spark cannot
    tell ``,,`` from ``,"",``), and blank text in a typed column is null, counted as empty.
    """
    return tuple(dict.fromkeys(v for v in values if v != ""))


def _trimmed(values: pl.Expr) -> pl.Expr:
    return values.str.strip_chars(" ")


def _is_literal(values: pl.Expr, dtype: str) -> pl.Expr:
    """True where the (present) text is a plain literal of ``dtype``."""
    stripped = values.str.strip_chars(_WS_CHARS)
    if dtype == "bigint":
        return values.str.contains(INT_RE) & stripped.cast(pl.Int64, strict=False).is_not_null()
    if dtype == "double":
        number = stripped.cast(pl.Float64, strict=False)
        return (values.str.contains(DECIMAL_RE) & number.is_finite().fill_null(False)) | values.str.contains(
            SPECIAL_FLOAT_RE
        )
    if dtype == "boolean":
        return _trimmed(values).str.to_lowercase().is_in(BOOL_WORDS)
    if dtype == "date":
        return values.str.contains(DATE_RE) & stripped.str.to_date("%Y-%m-%d", strict=False).is_not_null()
    if dtype == "timestamp":
        part = values.str.extract_groups(TIMESTAMP_RE)
        day = part.struct.field("1").str.to_date("%Y-%m-%d", strict=False)

        def within(group: str, top: int) -> pl.Expr:
            return part.struct.field(group).cast(pl.Int32, strict=False).fill_null(0) <= top

        return (
            values.str.contains(TIMESTAMP_RE) & day.is_not_null()
            & within("3", 23) & within("4", 59) & within("6", 59) & within("9", 18) & within("11", 59)
        )
    raise ValueError(f"no inference rule for {dtype!r}")


def infer_types(sample: pl.DataFrame, *, null_values: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Infer, per column of ``sample``, the narrowest type that keeps every present value.

    Parameters
    ----------
    sample : polars.DataFrame
        String columns (a bounded sample of the source).
    null_values : mapping of column -> tokens
        The null tokens of each column (see :func:`null_tokens`); a column absent here has none.

    Returns
    -------
    dict of column -> Spark type name
        One of :data:`INFERENCE_ORDER`, or ``"string"`` (also for a column with no present value).
    """
    checks = []
    for c in sample.columns:
        values = pl.col(c)
        present = values.is_not_null() & (_trimmed(values) != "") & ~_trimmed(values).is_in(
            null_tokens(null_values.get(c, ()))
        )
        checks.append(present.sum().alias(f"{c}\x00present"))
        checks.extend(
            (present & ~_is_literal(values, dtype).fill_null(False)).sum().alias(f"{c}\x00{dtype}")
            for dtype in INFERENCE_ORDER
        )
    if not checks:
        return {}
    counts = sample.select(checks).row(0, named=True)
    inferred = {}
    for c in sample.columns:
        fits = [t for t in INFERENCE_ORDER if counts[f"{c}\x00{t}"] == 0]
        inferred[c] = fits[0] if counts[f"{c}\x00present"] and fits else "string"
    return inferred


def tokens_seen(sample: pl.DataFrame, *, null_values: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """Per column, how often each (non-empty) null token occurs in ``sample`` (columns with none omitted)."""
    seen: dict[str, dict[str, int]] = {}
    for c in sample.columns:
        tokens = null_tokens(null_values.get(c, ()))
        if not tokens:
            continue
        trimmed = sample.select(_trimmed(pl.col(c)).alias("v")).filter(pl.col("v").is_in(tokens))
        counts = dict(trimmed.group_by("v").len().sort("v").iter_rows())
        if counts:
            seen[c] = {t: int(counts[t]) for t in tokens if t in counts}
    return seen
