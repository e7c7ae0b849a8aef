"""The ingest stage: source files -> ``DIR/bronze`` + ``DIR/quarantine`` (+ ``DIR/_ingested_files``).

One Spark plan does the work. The source is read untyped (CSV/JSON as strings with
Spark's corrupt-record column; Parquet/Delta as they are), every field is cast with Spark
SQL ``try_cast`` and checked, and each row gets a boolean ``_failed``. Good rows go to
bronze; the rest go to quarantine with a ``_reason`` built for them alone (:class:`Plan`). A Spark ``Observation`` on the same plan counts
rows read, rows failed and the per-column special values during the bronze write, so clean
data is read exactly once; the quarantine pass only runs when some row failed.

Row ids
-------
``_row_id = (file_ordinal << 40) + position``. Files are numbered in path order (append
mode continues after the last recorded ordinal). ``position`` is the Parquet row index, or
for text files ``split_start * f + row index within the split`` (``f`` = 1, or 256 for
compressed files, whose rows may outnumber their bytes). Every row starts at its own byte,
so a split of ``n`` bytes holds fewer than ``n`` rows and positions from different splits
never meet; the run checks this per row and fails if it ever does not hold. The split of a
file is fixed (``SPLIT_BYTES``, one split per task) so ids do not depend on the number of
cores: the same files give the same ids on every run.

Decisions
---------
- Counting: ``rows_read`` and ``rows_quarantined`` come from the Observation, ``rows_written``
  from the committed bronze table; if ``rows_read != rows_written + rows_quarantined`` the run
  fails (exit 1) and its files are not recorded as ingested.
- CSV: an empty field is null (Spark cannot tell ``,,`` from ``,"",``); whitespace-only
  values in non-string columns are null and counted as ``empty``. A data row equal to the
  header is quarantined as "repeated header row". Every file must start with the same header.
- JSON lines: the keys come from a full pass of Spark's schema inference (a key that first
  appears late would otherwise be dropped silently); blank lines are not records.
- Undecodable bytes: the CSV reader turns them into U+FFFD, the JSON reader keeps invalid
  UTF-8; both are quarantined, and ``_raw`` is stored as valid UTF-8.
- Output files: ``ceil(input_bytes / target_file_mb)`` files; the plan is repartitioned (by
  ``_row_id``) only when the input has more splits than that, so large files pay no shuffle.
- Append: files whose path is in ``_ingested_files`` are refused (all refused: exit 2) unless
  ``force``; ids continue after the last recorded file ordinal. A run that committed rows but
  not its ledger entry blocks later appends instead of duplicating rows.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import delta, fs
from pipelines.columns import quote as _quote
from pipelines.errors import UserError
from pipelines.ingest import infer
from pipelines.ingest import names as N
from pipelines.ingest import schema as S
from pipelines.ingest import sources as src

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import IngestSettings
    from pipelines.runs import Run

SPLIT_BYTES = 128 * 1024 * 1024
ROW_BITS = 40
COMPRESSED_FACTOR = 256
PROPERTY_PREFIX = "pipelines.ingest."
QUARANTINE_SCHEMA = T.StructType([
    T.StructField(N.ROW_ID, T.LongType()),
    T.StructField(N.SOURCE_FILE, T.StringType()),
    T.StructField("_reason", T.StringType()),
    T.StructField("_raw", T.StringType()),
    T.StructField(N.INGESTED_AT, T.TimestampType()),
])
LEDGER_SCHEMA = T.StructType([
    T.StructField("path", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("mtime_ms", T.LongType()),
    T.StructField("file_ordinal", T.LongType()),
    T.StructField("format", T.StringType()),
    T.StructField("run_id", T.StringType()),
    T.StructField("ingested_at", T.TimestampType()),
])
# Session settings for the run. Huge open cost: every file split gets its own task, so
# ids do not depend on how Spark packs small files. Corrupt or vanished files must fail
# the job, never be skipped.
_SCOPED_CONF = {
    "spark.sql.files.maxPartitionBytes": str(SPLIT_BYTES),
    "spark.sql.files.openCostInBytes": str(1 << ROW_BITS),
    "spark.sql.files.ignoreCorruptFiles": "false",
    "spark.sql.files.ignoreMissingFiles": "false",
}


@dataclass
class Columns:
    """The source columns: original names, safe names, the type read and the bronze type."""

    original: list[str]
    safe: list[str]
    read_types: list[T.DataType]
    target: dict[str, T.DataType] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # safe name -> schema_file | table | inferred | source
    delimiter: str = ","  # CSV only
    null_values: dict[str, tuple[str, ...]] = field(default_factory=dict)  # safe name -> tokens (CSV / JSON)

    def mapping(self) -> list[dict[str, str]]:
        return [{"original": o, "safe": s} for o, s in zip(self.original, self.safe, strict=True)]


def run(spark: SparkSession, s: IngestSettings, run: Run) -> None:
    """Ingest ``s.source`` into ``<output>/bronze`` and ``<output>/quarantine``.

    Parameters
    ----------
    spark : SparkSession
    s : IngestSettings
        The ``ingest`` section (source, format, output, schema_file, mode, force, ...).
    run : Run
        Filled with counts (rows_read / rows_written / rows_quarantined, files),
        outputs, timings and details (schema, column mapping, special values per column).

    Raises
    ------
    UserError
        A missing path, an empty glob, an unreadable file, a format that does not match
        the files, a schema file that does not parse, files already ingested (append
        without ``force``), or an append whose columns do not match the bronze table.
    """
    if not s.source:
        raise UserError("--source: required (or ingest.source in the config)")
    if not s.format:
        raise UserError("--format: required: csv, parquet, json or delta (or ingest.format in the config)")
    run.record = not s.dry_run  # a preview leaves no trace, also when it fails
    out = {kind: fs.join(s.output, kind) for kind in ("bronze", "quarantine", "_ingested_files")}
    ingested_at = datetime.fromisoformat(run.started_at)
    with _scoped_conf(spark):
        with run.timed("list"):
            files = _source_files(spark, s)
            files, first_ordinal = _refuse_ingested(spark, s, files, out, run)
            run.counts["files"] = len(files)
            run.counts["input_bytes"] = sum(f.size for f in files)
        with run.timed("schema"):
            raw, cols = _read_raw(spark, s, files)
            _choose_types(raw, cols, s, out["bronze"], run)
        if s.dry_run:
            _print_preview(cols, run)
            return
        plan = _plan(raw, cols, s, files, first_ordinal=first_ordinal, ingested_at=ingested_at)
        _write(plan, cols, s, files, out, run, first_ordinal=first_ordinal)
    if run.status == "running" and not s.dry_run:
        _write_ledger(s, files, first_ordinal, out["_ingested_files"], run, ingested_at)


@contextmanager
def _scoped_conf(spark: SparkSession) -> Iterator[None]:
    saved = {key: spark.conf.get(key, None) for key in _SCOPED_CONF}
    for key, value in _SCOPED_CONF.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _source_files(spark: SparkSession, s: IngestSettings) -> list[src.SourceFile]:
    if s.format != "delta":
        files = src.list_files(s.source)
        src.check_format(files, s.format)
        return files
    if not fs.exists(fs.join(s.source, "_delta_log")):
        raise UserError(f"{s.source}: not a Delta table (no _delta_log folder) (--format delta)")
    uris = delta.read_table(spark, s.source).inputFiles()
    if not uris:
        raise UserError(f"{s.source}: Delta table has no data files")
    paths = [u if fs.is_remote(u) else unquote(fs.local_path(u)) for u in uris]
    return sorted((src.list_files(p)[0] for p in paths), key=lambda f: f.path)


def _check_unrecorded(spark: SparkSession, out: Mapping[str, str], first_ordinal: int) -> None:
    """Refuse to append after a run that committed rows but died before recording its files.

    Such rows carry ids at or above the first free ordinal; appending now would either
    duplicate them (the same files again) or leave them unaccounted for.
    """
    for kind in ("bronze", "quarantine"):
        if not delta.table_exists(out[kind]):
            continue
        top = delta.read_table(spark, out[kind]).agg(F.max(N.ROW_ID)).first()[0]
        if top is not None and top >> ROW_BITS >= first_ordinal:
            raise UserError(
                f"{out[kind]}: holds rows of an append run that did not record its files in "
                f"{out['_ingested_files']} (it stopped between commits); restore the table to the version "
                "before that run or re-ingest with --mode overwrite"
            )


def _read_ledger(path: str) -> list[dict[str, Any]]:
    if not delta.table_exists(path):
        return []
    # One row per ingested file: metadata, bounded by the number of files, never table data.
    return delta.scan_table(path).select("path", "file_ordinal", "run_id").collect().to_dicts()


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC", prefers_large_types=False)


def _refuse_ingested(
    spark: SparkSession, s: IngestSettings, files: list[src.SourceFile], out: Mapping[str, str], run: Run
) -> tuple[list[src.SourceFile], int]:
    """Append mode: drop files the ledger already has (unless ``force``); the first free ordinal."""
    if s.mode == "overwrite":
        return files, 0
    ledger = out["_ingested_files"]
    known = _read_ledger(ledger)
    first_ordinal = max((r["file_ordinal"] for r in known), default=-1) + 1
    _check_unrecorded(spark, out, first_ordinal)
    done = {r["path"]: r["run_id"] for r in known}
    again = [f for f in files if f.key in done]
    if again and not s.force:
        run.details["files_refused"] = [f.path for f in again]
        run.counts["files_refused"] = len(again)
        if len(again) == len(files):
            raise UserError(
                f"{s.source}: all {len(files)} file(s) were already ingested (first: {again[0].path} by run "
                f"{done[again[0].key]}); use --force to ingest them again"
            )
        run.warn(f"refused {len(again)} already-ingested file(s), e.g. {again[0].path}; use --force to re-ingest")
        files = [f for f in files if f.key not in done]
    return files, first_ordinal


def _read_raw(spark: SparkSession, s: IngestSettings, files: list[src.SourceFile]) -> tuple[DataFrame, Columns]:
    """The untyped source with its columns renamed to safe names, plus the file metadata columns."""
    schema_fields = S.read_schema_file(s.schema_file) if s.schema_file else None
    delimiter = ","
    if s.format == "csv":
        df, original, delimiter = _read_csv(spark, s, files, schema_fields)
    elif s.format == "json":
        original = src.json_keys(spark, files, encoding=s.encoding)
        if not original:
            raise UserError(f"{s.source}: no JSON object with a key found (--format json)")
        df = src.read_json(spark, files, keys=original, encoding=s.encoding)
    elif s.format == "parquet":
        df = src.read_parquet(spark, files)
        original = df.columns
    else:
        df = delta.read_table(spark, s.source)
        original = df.columns
        keys = [f.key for f in files]
        df = df.where(src.file_key(F.col("_metadata.file_path")).isin(keys))
    safe = N.safe_names(original)
    types = {f.name: f.dataType for f in df.schema.fields}
    read_types = [types[c] if s.format in ("parquet", "delta") else T.StringType() for c in original]
    meta = [
        F.col("_metadata.file_path").alias("_file_path"),
        F.col("_metadata.file_block_start").alias("_block_start"),
        F.col("_metadata.file_block_length").alias("_block_length"),
        # Row index within the task's split: the low 33 bits of the id (the task is the split).
        (F.monotonically_increasing_id().bitwiseAND((1 << 33) - 1)).alias("_row_in_split"),
    ]
    if s.format in ("parquet", "delta"):
        meta.append(F.col("_metadata.row_index").alias("_row_index"))
        renamed = [F.col(_quote(o)).alias(n) for o, n in zip(original, safe, strict=True)]
    else:
        # CSV columns are already read under their safe names; JSON keys are renamed here.
        renamed = [F.col(_quote(o)).alias(n) for o, n in zip(df.columns[:-1], safe, strict=True)]
        renamed.append(F.col(src.CORRUPT))
    cols = Columns(original=list(original), safe=safe, read_types=read_types, delimiter=delimiter)
    if s.format in ("csv", "json"):
        cols.null_values = {c: tuple(s.null_values) for c in safe}
    if schema_fields is not None:
        _apply_schema_file(cols, schema_fields, s)
    return df.select(*renamed, *meta), cols


def _read_csv(
    spark: SparkSession,
    s: IngestSettings,
    files: list[src.SourceFile],
    schema_fields: list[S.SchemaField] | None,
) -> tuple[DataFrame, list[str], str]:
    nonempty = [f for f in files if f.size > 0]
    if not nonempty:
        raise UserError(f"{s.source}: every file is empty")
    given = {"\\t": "\t", "tab": "\t"}.get(s.delimiter or "", s.delimiter)  # "\t" as typed in a shell
    first, delimiter = src.csv_header(nonempty[0], delimiter=given, encoding=s.encoding)
    if s.header:
        src.check_headers(nonempty, first, delimiter=delimiter, encoding=s.encoding)
        original = first
    elif schema_fields is not None:
        original = [f.name for f in schema_fields]
    else:
        original = [f"col_{i + 1}" for i in range(len(first))]
    df = src.read_csv(
        spark, files, columns=N.safe_names(original), delimiter=delimiter, header=s.header,
        encoding=s.encoding, multiline=s.multiline,
    )
    return df, original, delimiter


def _apply_schema_file(cols: Columns, fields: list[S.SchemaField], s: IngestSettings) -> None:
    by_name = {**dict(zip(cols.safe, cols.safe, strict=True)), **dict(zip(cols.original, cols.safe, strict=True))}
    for f in fields:
        if f.name not in by_name:
            raise UserError(f"{s.schema_file}: column {f.name!r} is not in the source (columns: {_names(cols.original)})")
        c = by_name[f.name]
        cols.target[c], cols.origin[c] = f.type, "schema_file"
        if f.null_values is not None and s.format in ("csv", "json"):
            cols.null_values[c] = f.null_values


def _names(names: list[str]) -> str:
    text = ", ".join(names)
    return text if len(text) <= 100 else text[:97] + "..."


def _choose_types(raw: DataFrame, cols: Columns, s: IngestSettings, bronze: str, run: Run) -> None:
    """Bronze types: the schema file, else the existing bronze table (append), else inferred or native."""
    existing = _bronze_types(raw.sparkSession, bronze) if s.mode == "append" else None
    if existing is not None:
        extra = [c for c in cols.safe if c not in existing]
        missing = [c for c in existing if c not in cols.safe]
        if extra or missing:
            what = f"new column(s) {extra}" if extra else f"missing column(s) {missing}"
            raise UserError(f"{s.source}: {what} compared with the bronze table {bronze}; use --mode overwrite")
        for c in cols.safe:
            if c not in cols.target:
                cols.target[c], cols.origin[c] = existing[c], "table"
    todo = [c for c, t in zip(cols.safe, cols.read_types, strict=True) if c not in cols.target]
    if s.format in ("parquet", "delta"):
        for c, t in zip(cols.safe, cols.read_types, strict=True):
            if c in todo:
                cols.target[c], cols.origin[c] = t, "source"
    elif todo or s.dry_run:
        sample = _text_sample(raw, cols, s)
        for c, t in infer.infer_types(sample.select(todo), null_values=cols.null_values).items():
            cols.target[c], cols.origin[c] = T.DataType.fromDDL(t), "inferred"
        run.counts["sample_rows"] = sample.height
        run.details["null_tokens_seen"] = infer.tokens_seen(sample, null_values=cols.null_values)
    schema = [{"name": c, "original": o, "type": cols.target[c].simpleString(), "from": cols.origin[c]}
              for c, o in zip(cols.safe, cols.original, strict=True)]
    run.details["schema"] = schema
    run.details["column_mapping"] = cols.mapping()
    if cols.null_values:
        run.details["null_values"] = _null_values_record(cols, s)
    for item in schema:
        run.progress(f"schema: {item['name']} {item['type']} ({item['from']}; source column {item['original']!r})")


def _text_sample(raw: DataFrame, cols: Columns, s: IngestSettings) -> pl.DataFrame:
    """The first ``infer_sample_rows`` well-formed records (CSV / JSON), as strings on the driver.

    Bounded by the setting whatever the input size; Spark stops reading each split once
    the limit is reached.
    """
    usable = F.col(src.CORRUPT).isNull()
    if s.format == "csv" and s.header:
        usable = usable & ~_repeated_header(cols)
    return pl.from_arrow(raw.where(usable).select(*cols.safe).limit(s.infer_sample_rows).toArrow())


def _null_values_record(cols: Columns, s: IngestSettings) -> dict[str, Any]:
    """The run's null tokens, and the columns whose schema-file entry replaced them."""
    run_set = tuple(s.null_values)
    own = {c: list(t) for c, t in cols.null_values.items() if t != run_set}
    return {"default": list(run_set), **({"columns": own} if own else {})}


def _print_preview(cols: Columns, run: Run) -> None:
    """``--dry-run``: the schema, name mapping and null tokens seen, as a table on stdout (nothing written)."""
    seen = run.details.get("null_tokens_seen", {})
    rows = [(repr(o), c, cols.target[c].simpleString(), cols.origin[c],
             ", ".join(f"{t} x{n}" for t, n in seen.get(c, {}).items()))
            for o, c in zip(cols.original, cols.safe, strict=True)]
    header = ("source column", "column", "type", "from", "null tokens seen")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    sampled = f" in a sample of {run.counts['sample_rows']} rows" if "sample_rows" in run.counts else ""
    print(f"dry run: nothing written; types{sampled}", flush=True)
    for r in [header, *rows]:
        print("  ".join([*(v.ljust(w) for v, w in zip(r, widths, strict=False)), r[-1]]).rstrip(), flush=True)
    if "null_values" in run.details:
        print(f"null tokens: {run.details['null_values']['default']} (NaN and inf are floating-point values)", flush=True)


def _bronze_types(spark: SparkSession, bronze: str) -> dict[str, T.DataType] | None:
    if not delta.table_exists(bronze):
        return None
    fields = delta.read_table(spark, bronze).schema.fields
    return {f.name: f.dataType for f in fields if f.name not in N.METADATA_COLUMNS}


@dataclass
class Plan:
    """Every source row with its typed values, failure flag and ids, and how to view it.

    ``rows`` keeps the raw fields and their casts; :meth:`bronze` and :meth:`quarantine`
    filter on the boolean ``_failed`` first and only then project. So clean rows never
    evaluate the reason text (a large expression: as one projection per row it is too big
    for the JIT to compile, and the read ran at a third of the speed), and the reason is
    built for failing rows alone.
    """

    rows: DataFrame
    values: list[Column]
    reason: Column
    raw_record: Column

    def bronze(self) -> DataFrame:
        return self.rows.where(~F.col("_failed")).select(
            *self.values, N.ROW_ID, N.SOURCE_FILE, N.INGESTED_AT
        )

    def quarantine(self) -> DataFrame:
        return self.rows.where(F.col("_failed")).select(
            N.ROW_ID,
            N.SOURCE_FILE,
            self.reason.alias("_reason"),
            # Valid UTF-8 (bad bytes as U+FFFD), so every reader of the quarantine can load it.
            F.call_function("make_valid_utf8", self.raw_record).alias("_raw"),
            N.INGESTED_AT,
        )


def _plan(
    raw: DataFrame,
    cols: Columns,
    s: IngestSettings,
    files: list[src.SourceFile],
    *,
    first_ordinal: int,
    ingested_at: datetime,
) -> Plan:
    """Typed values, ``_failed``, ``_row_id``, ``_source_file`` for every source row (module docstring)."""
    text = s.format in ("csv", "json")
    # Each cast is computed once in its own projection: the checks below refer to it several times.
    casts = {
        c: S.cast_expr(F.col(c), source_type=t, target=cols.target[c], null_values=cols.null_values.get(c, ()))
        for c, t in zip(cols.safe, cols.read_types, strict=True)
    }
    typed = {c: f"_typed_{i}" for i, c in enumerate(cols.safe) if casts[c] is not None}
    raw = raw.select("*", *[casts[c].alias(name) for c, name in typed.items()],
                     _file_ordinal(files, first_ordinal).alias("_ordinal"))
    checks = {
        c: S.check_field(F.col(c), name=c, source_type=t, target=cols.target[c],
                         cast=F.col(typed[c]) if c in typed else None, null_values=cols.null_values.get(c, ()))
        for c, t in zip(cols.safe, cols.read_types, strict=True)
    }
    failed, reason = _reason(cols, checks, s) if text else _field_problems(cols, checks, s)
    ordinal = F.col("_ordinal")
    index = (ordinal - first_ordinal + 1).cast("int")
    # Per-file constants by ordinal (constant arrays): no string work per row.
    source_file = F.element_at(F.array(*[F.lit(f.key) for f in files]), index)
    if text:
        compressed = [bool(re.search(src.COMPRESSED_RE, f.path)) for f in files]
        factor = F.element_at(F.array(*[F.lit(COMPRESSED_FACTOR if c else 1) for c in compressed]), index)
        position = F.col("_block_start") * factor + F.col("_row_in_split")
        # The ids of one split stay inside its own byte range only if this holds (module docstring).
        id_ok = F.col("_row_in_split") < F.greatest(F.col("_block_length") * factor, F.lit(1))
        raw_record = F.coalesce(F.col(src.CORRUPT), F.to_json(F.struct(*cols.safe)))
    else:
        position, id_ok = F.col("_row_index"), F.lit(True)
        raw_record = F.to_json(F.struct(*cols.safe))
    row_id = F.shiftleft(ordinal, ROW_BITS) + position
    rows = raw.select(
        "*",
        row_id.alias(N.ROW_ID),
        source_file.alias(N.SOURCE_FILE),
        F.lit(ingested_at.isoformat()).cast("timestamp").alias(N.INGESTED_AT),
        # Never null (a null flag would put the row in neither table): SQL's three-valued
        # logic makes e.g. `abs(null) = inf AND ...` null for a blank value.
        F.coalesce(failed, F.lit(False)).alias("_failed"),
        id_ok.alias("_id_ok"),
    )
    values = [checks[c].value.alias(c) for c in cols.safe]
    return Plan(rows=rows, values=values, reason=reason, raw_record=raw_record)


def _file_ordinal(files: list[src.SourceFile], first_ordinal: int) -> Column:
    """The file ordinal of each row, from Spark's ``_metadata.file_path``.

    The plain lookup (Spark's exact path string, known for paths with nothing to escape)
    is tried first; URL-decoding the path per row is the fallback, so rows of ordinary
    files pay no string decoding.
    """
    def lookup(pairs: list[tuple[str, int]], key: Column) -> Column:
        if not pairs:
            return F.lit(None).cast("long")
        keys, values = zip(*pairs, strict=True)
        return F.element_at(F.map_from_arrays(F.array(*map(F.lit, keys)), F.array(*map(F.lit, values))), key)

    numbered = [(f, first_ordinal + i) for i, f in enumerate(files)]
    plain = lookup([(f.spark_path, n) for f, n in numbered if f.spark_path], F.col("_file_path"))
    decoded = lookup([(f.key, n) for f, n in numbered], src.file_key(F.col("_file_path")))
    return F.coalesce(plain, decoded).cast("long")


def _counts_empty(cols: Columns, c: str) -> bool:
    """Columns whose blank source strings become null (so `empty` is counted from the raw value)."""
    read = cols.read_types[cols.safe.index(c)]
    return isinstance(read, T.StringType) and not isinstance(cols.target[c], T.StringType)


def _field_problems(cols: Columns, checks: Mapping[str, S.FieldCheck], s: IngestSettings) -> tuple[Column, Column]:
    """Whether some field of a row failed (cheap booleans), and the text naming each failing field."""
    undecodable: dict[str, Column] = {}
    if s.format in ("csv", "json") and s.encoding.upper().replace("-", "") == "UTF8":
        # Spark decodes invalid UTF-8 to U+FFFD; finding it is how undecodable bytes are caught.
        undecodable = {
            c: _undecodable(F.col(c), s.format)
            for c, t in zip(cols.safe, cols.read_types, strict=True)
            if isinstance(t, T.StringType)
        }
    # An undecodable field is reported as such, not also as a value of the wrong type.
    problems = [
        F.when(undecodable[c], F.lit(f"{c}: undecodable bytes (not valid {s.encoding})")).otherwise(checks[c].problem)
        if c in undecodable else checks[c].problem
        for c in cols.safe
    ]
    # The flag needs the U+FFFD search only for string columns: a replacement character
    # never parses as a number, date or boolean, so there the failed cast already flags
    # the row (and the reason, built for failing rows only, still says "undecodable").
    flags = [
        undecodable[c] | checks[c].failed if c in undecodable and isinstance(cols.target[c], T.StringType)
        else checks[c].failed
        for c in cols.safe
    ]
    any_failed = F.lit(False)
    for flag in flags:
        any_failed = any_failed | flag
    return any_failed, F.concat_ws("; ", *problems)


def _reason(cols: Columns, checks: Mapping[str, S.FieldCheck], s: IngestSettings) -> tuple[Column, Column]:
    """CSV / JSON: ``(failed, reason)`` with the record-level problems before the field ones."""
    corrupt = F.col(src.CORRUPT)
    if s.format == "csv":
        delimiter = cols.delimiter
        # Split on the delimiter outside quotes to report how many fields the record had.
        outside_quotes = _java_regex_literal(delimiter) + r'(?=(?:[^"]*"[^"]*")*[^"]*$)'
        bad_record = F.format_string(
            f"wrong number of fields: expected {len(cols.safe)}, got %d", F.size(F.split(corrupt, outside_quotes))
        )
    else:
        bad_record = F.lit("malformed JSON record (not one JSON object per line)")
    undecodable = F.when(_undecodable(corrupt, s.format), F.lit(f"undecodable bytes (not valid {s.encoding})"))
    field_failed, field_reason = _field_problems(cols, checks, s)
    failed = corrupt.isNotNull()
    reason = F.when(corrupt.isNotNull(), F.concat_ws("; ", bad_record, undecodable))
    if s.format == "csv" and s.header:
        header = _repeated_header(cols)
        failed = failed | header
        reason = reason.when(header, F.lit("repeated header row"))
    return failed | field_failed, reason.otherwise(field_reason)


def _undecodable(text: Column, fmt: str) -> Column:
    # The CSV reader decodes bad bytes to U+FFFD; the JSON reader keeps them as invalid UTF-8.
    replaced = F.instr(text, "\ufffd") > 0
    return replaced if fmt == "csv" else replaced | ~F.call_function("is_valid_utf8", text)


def _repeated_header(cols: Columns) -> Column:
    """A data row equal to the header (files concatenated with their headers)."""
    repeated = F.lit(True)
    for c, o in zip(cols.safe, cols.original, strict=True):
        repeated = repeated & F.coalesce(F.col(c) == F.lit(o), F.lit(False))
    return repeated


def _java_regex_literal(text: str) -> str:
    return "".join(ch if ch.isalnum() else ("\\t" if ch == "\t" else "\\" + ch) for ch in text)


def _observed_metrics(cols: Columns) -> list[Column]:
    """The counts taken while the source is read: kept few, since each one is evaluated per row."""
    good = ~F.col("_failed")
    metrics = [
        F.count(F.lit(1)).alias("rows_read"),
        F.count_if(~good).alias("rows_bad"),
        F.count_if(~F.col("_id_ok") | F.col(N.ROW_ID).isNull()).alias("ids_bad"),
    ]
    for i, c in enumerate(cols.safe):
        if _counts_empty(cols, c):
            # A good row whose typed value is null but whose source text was not: the text was
            # blank, or a null token (counted as null).
            blank = good & F.col(f"_typed_{i}").isNull() & F.col(c).isNotNull()
            token = S.is_null_token(F.col(c), cols.null_values.get(c, ()))
            if token is not None:
                blank = blank & ~token
            metrics.append(F.count_if(blank).alias(f"{c}\x00empty"))
    return metrics


def _special_values(
    spark: SparkSession, bronze: str, cols: Columns, metrics: Mapping[str, Any], first_ordinal: int
) -> dict[str, dict[str, int]]:
    """Per column: null, empty, NaN, +inf and -inf counts of this run's bronze rows.

    Counted on the committed table (the rows of this run: ids from its first file
    ordinal on), reading only the columns, which is cheaper than counting them per row
    while the source is parsed.
    """
    aggs = []
    for c in cols.safe:
        value, target = F.col(c), cols.target[c]
        aggs.append(F.count_if(value.isNull()).alias(f"{c}\x00null"))
        if isinstance(target, T.StringType):
            aggs.append(F.count_if(value == "").alias(f"{c}\x00empty"))
        if isinstance(target, (T.FloatType, T.DoubleType)):
            aggs.append(F.count_if(F.isnan(value)).alias(f"{c}\x00nan"))
            aggs.append(F.count_if(value == float("inf")).alias(f"{c}\x00pos_inf"))
            aggs.append(F.count_if(value == float("-inf")).alias(f"{c}\x00neg_inf"))
    rows = delta.read_table(spark, bronze).where(F.col(N.ROW_ID) >= F.lit(first_ordinal << ROW_BITS))
    counts = {**rows.agg(*aggs).first().asDict(), **{k: v for k, v in metrics.items() if "\x00" in k}}
    result: dict[str, dict[str, int]] = {c: {} for c in cols.safe}
    for key, value in counts.items():
        column, kind = key.split("\x00")
        result[column][kind] = int(value)
    for c in cols.safe:
        if _counts_empty(cols, c):
            result[c]["null"] -= result[c]["empty"]  # blank source text is counted as empty, not null
    return {c: {k: result[c][k] for k in ("null", "empty", "nan", "pos_inf", "neg_inf") if k in result[c]}
            for c in cols.safe}


def _write(
    plan: Plan,
    cols: Columns,
    s: IngestSettings,
    files: list[src.SourceFile],
    out: Mapping[str, str],
    run: Run,
    *,
    first_ordinal: int,
) -> None:
    input_bytes = sum(f.size for f in files)
    splits = sum(max(1, math.ceil(f.size / SPLIT_BYTES)) for f in files)
    n_files = max(1, math.ceil(input_bytes / (s.target_file_mb * 1024 * 1024)))
    observation = Observation("ingest")
    observed = replace(plan, rows=plan.rows.observe(observation, *_observed_metrics(cols)))
    good = _sized(observed.bronze(), n_files, splits)
    props = _properties(cols, s, run)
    target_bytes = s.target_file_mb * 1024 * 1024
    with run.timed("write bronze"):
        written = _write_counted(good, out["bronze"], mode=s.mode, properties=props, target_file_bytes=target_bytes)
    metrics = observation.get
    rows_read, rows_bad = metrics["rows_read"], metrics["rows_bad"]
    if metrics["ids_bad"]:
        raise RuntimeError(
            f"row id invariant broken for {metrics['ids_bad']} rows (null, or outside their split's range): "
            f"bronze {out['bronze']} may hold duplicate ids; this is a bug"
        )
    quarantined = 0
    with run.timed("write quarantine"):
        if rows_bad:
            recheck = Observation("ingest_quarantine")
            bad = replace(plan, rows=plan.rows.observe(recheck, F.count(F.lit(1)).alias("rows_read"))).quarantine()
            n_bad_files = max(1, math.ceil(n_files * rows_bad / max(rows_read, 1)))
            quarantine = _sized(bad.select(*QUARANTINE_SCHEMA.names), n_bad_files, splits)
            quarantined = _write_counted(
                quarantine, out["quarantine"], mode=s.mode, properties=props, target_file_bytes=target_bytes
            )
            if recheck.get["rows_read"] != rows_read:
                run.warn(f"source rows changed between passes: {rows_read} then {recheck.get['rows_read']}")
        elif s.mode == "overwrite" or not delta.table_exists(out["quarantine"]):
            # Nothing to quarantine: an empty table (an atomic replace in overwrite mode), no Spark job.
            delta.write_polars(_arrow_schema(QUARANTINE_SCHEMA).empty_table(), out["quarantine"], mode=s.mode,
                               properties=props)
    run.counts.update(rows_read=rows_read, rows_written=written, rows_quarantined=quarantined, output_files_target=n_files)
    run.outputs.update(bronze=out["bronze"], quarantine=out["quarantine"], ingested_files=out["_ingested_files"])
    with run.timed("special values"):
        run.details["special_values"] = _special_values(plan.rows.sparkSession, out["bronze"], cols, metrics, first_ordinal)
    if rows_read != written + quarantined or written != rows_read - rows_bad:
        run.status = "failed"
        run.error = (
            f"reconciliation failed: rows_read {rows_read} != rows_written {written} + rows_quarantined "
            f"{quarantined} (expected {rows_bad} quarantined); the files are not recorded as ingested"
        )
        run.progress(run.error)
    if rows_bad:
        run.warn(f"{rows_bad} of {rows_read} rows quarantined; see {out['quarantine']} (_reason)")


def _write_counted(df: DataFrame, path: str, *, mode: str, **options: Any) -> int:
    """Write ``df`` and return the rows the table gained, counted from the committed table.

    Counting the table (Parquet row-group metadata, no data read) rather than the plan
    makes the reconciliation check what was actually committed.
    """
    before = _table_rows(df.sparkSession, path) if mode == "append" else 0
    delta.write_table(df, path, mode=mode, **options)
    return _table_rows(df.sparkSession, path) - before


def _table_rows(spark: SparkSession, path: str) -> int:
    return delta.read_table(spark, path).count() if delta.table_exists(path) else 0


def _sized(df: DataFrame, n_files: int, splits: int) -> DataFrame:
    """Output files near the target size: fewer partitions only when the input has more splits.

    Hash-partitioned on ``_row_id`` (deterministic, no sort); without it each split already
    writes at most one target-sized file, so no shuffle is paid.
    """
    return df.repartition(n_files, N.ROW_ID) if n_files < splits else df


def _properties(cols: Columns, s: IngestSettings, run: Run) -> dict[str, str]:
    return {
        f"{PROPERTY_PREFIX}columnMapping": json.dumps(cols.mapping(), ensure_ascii=False),
        f"{PROPERTY_PREFIX}sourceFormat": str(s.format),
        f"{PROPERTY_PREFIX}name": s.name or "",
        f"{PROPERTY_PREFIX}runId": run.run_id,
    }


def _write_ledger(
    s: IngestSettings,
    files: list[src.SourceFile],
    first_ordinal: int,
    path: str,
    run: Run,
    ingested_at: datetime,
) -> None:
    columns = {
        "path": [f.key for f in files],
        "size": [f.size for f in files],
        "mtime_ms": [f.mtime_ms for f in files],
        "file_ordinal": [first_ordinal + i for i in range(len(files))],
        "format": [s.format] * len(files),
        "run_id": [run.run_id] * len(files),
        "ingested_at": [ingested_at] * len(files),
    }
    # One row per file, written without Spark: metadata, not table data.
    delta.write_polars(pa.table(columns, schema=_arrow_schema(LEDGER_SCHEMA)), path, mode=s.mode)
