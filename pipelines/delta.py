"""All Delta I/O. The one module that knows which Delta backend is in use.

Two backends, chosen per Spark session:

``native``
    Spark's own Delta (Databricks, or a local session with the Delta jars fetched by
    ``make``), also over Spark Connect: ``format("delta")``, ``replaceWhere``,
    ``DESCRIBE HISTORY``.
``delta-rs``
    Everywhere else (a local session without the Delta jars, see
    :func:`pipelines.spark.delta_jars`). Spark *reads* a table through its active file
    list (never the folder, which also holds removed and orphaned files), with partition
    values from the log. Spark *writes* unpartitioned tables with its own Parquet
    writer into a fresh ``w-<uuid>/`` folder under the table root, and partitioned
    ones through a Python data source whose tasks stream their Arrow batches into
    Parquet files and return their add actions; either way the driver then makes ONE
    atomic commit with delta-rs. A killed writer leaves only unreferenced files, so
    readers keep seeing the previous version. Nothing is collected to the driver but
    the list of written files (and their footers).

Polars reads with ``scan_delta`` and writes through the same file writer and commit
as Spark (:func:`write_arrow_batches`), so every writer produces the same layout:
Hive-style ``col=value`` folders (values escaped, so a column value can never name a
path outside the table) and ``part-<uuid>.parquet`` files.

Modes: ``append``, ``overwrite``, and overwrite-where (``mode="overwrite"`` with
``replace_where={"column": "Amount"}``): one commit that removes exactly the files of
the matching partitions and adds the new ones. Custom table properties live in the
table description as JSON on both backends (delta-rs rejects unknown ``configuration``
keys); :func:`table_properties` also reads ``configuration`` keys named
``pipelines.properties.<key>``. Every add action carries min/max stats (see
:func:`_min_max`) and partition values in the protocol's format, so other engines can
skip files and read the values back.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import fs
from pipelines.columns import quote
from pipelines.errors import ConflictError, UserError

if TYPE_CHECKING:
    import polars as pl
    from pyspark.sql import DataFrame, SparkSession

Mode = Literal["append", "overwrite"]
_BACKEND_ENV = "PIPELINES_DELTA_BACKEND"
_PROPERTIES_KEY = "pipelines.properties"
_ROW_GROUP_BYTES = 64 << 20  # Arrow bytes buffered per open file before a row group is flushed
_DEFAULT_TARGET_FILE_BYTES = 128 << 20
# An uncommitted w-<uuid>/ folder younger than this may be a running writer's: kept.
ORPHAN_MIN_AGE_SECONDS = 3600.0
# Reader features a file-list read cannot honour: it would return deleted rows or wrong names.
_UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping"}


# --------------------------------------------------------------------------- backend


def set_backend(backend: str) -> None:
    """Force a backend (``native`` / ``delta-rs``) for this process; ``auto`` detects it."""
    if backend not in ("auto", "native", "delta-rs"):
        raise ValueError(f"Delta backend must be 'auto', 'native' or 'delta-rs', got {backend!r}")
    if backend == "auto":
        os.environ.pop(_BACKEND_ENV, None)
    else:
        os.environ[_BACKEND_ENV] = backend


def forced_backend() -> str:
    """The backend :func:`set_backend` (or ``$PIPELINES_DELTA_BACKEND``) forced, else ``auto``."""
    return os.environ.get(_BACKEND_ENV) or "auto"


def backend(spark: SparkSession) -> str:
    """The forced backend (:func:`set_backend`), else ``native`` where Spark has Delta, else ``delta-rs``.

    Spark has Delta on a Databricks runtime, in a session with Delta's SQL extension (what
    :func:`pipelines.spark.get_spark` sets up when the jars were fetched), or, on the
    classic API, when Delta's classes are on the driver's classpath. A Spark Connect
    session whose conf cannot be read (Databricks serverless) is taken to be Databricks.
    """
    forced = os.environ.get(_BACKEND_ENV)
    if forced:
        return forced
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "native"
    try:
        extensions = spark.conf.get("spark.sql.extensions", None) or ""
    except Exception:  # a locked-down Connect server
        return "native"
    if "DeltaSparkSessionExtension" in extensions:
        return "native"
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:  # Spark Connect without the extension: the server has no Delta we can rely on
        return "delta-rs"
    try:
        jvm.java.lang.Class.forName("org.apache.spark.sql.delta.DeltaLog")
        return "native"
    except Exception:
        return "delta-rs"


# --------------------------------------------------------------------------- table names

# catalog.schema.table, each part an identifier or `quoted`; a path always has a "/".
_NAME_PART = r"(?:`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)"
_TABLE_NAME = re.compile(rf"^{_NAME_PART}\.{_NAME_PART}\.{_NAME_PART}$")
_namespace: tuple[str, str, tuple[str, ...]] | None = None


def is_table_name(target: str) -> bool:
    """True when ``target`` is a three-part table name ``catalog.schema.table``, not a path."""
    return bool(_TABLE_NAME.match(str(target))) and not os.path.exists(str(target))


def use_tables(catalog: str | None, schema: str | None, *, roots: Iterable[str] = ()) -> None:
    """Name the Delta tables under ``roots`` ``<catalog>.<schema>.<folder>_<table>`` for this process.

    Every function here then takes the path ``<root>/.../<folder>/<table>`` as that named
    table (``saveAsTable``, ``DESCRIBE HISTORY``, ...), so stages keep building paths and
    do not care which target they get. ``catalog=None`` restores path-based tables.
    A leading ``_`` of the table folder is dropped (``_ingested_files`` -> ``ingested_files``).
    """
    global _namespace
    if catalog is None or schema is None:
        _namespace = None
        return
    _namespace = (catalog, schema, tuple(_uri(r) for r in roots))


def table_target(path: str) -> str:
    """The named table a Delta path stands for under :func:`use_tables`, else ``path`` itself."""
    if _namespace is None or is_table_name(path):
        return path
    catalog, schema, roots = _namespace
    uri = _uri(path)
    if not any(uri.startswith(root.rstrip("/") + "/") for root in roots):
        return path
    folder, table = uri.rstrip("/").split("/")[-2:]
    name = re.sub(r"[^a-z0-9_]", "_", f"{folder}_{table.lstrip('_')}".lower())
    return f"{catalog}.{schema}.{name}"


def _named(path: str) -> str | None:
    """The table name ``path`` resolves to, or None for a path-based table."""
    target = table_target(path)
    return target if is_table_name(target) else None


def _session_for(name: str) -> SparkSession:
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None or backend(spark) != "native":
        raise UserError(f"{name}: a named table needs a Spark session with native Delta (Databricks, or the Delta jars)")
    return spark


def _named_version(spark: SparkSession, name: str) -> int:
    return int(spark.sql(f"DESCRIBE HISTORY {name} LIMIT 1").first()["version"])


def _named_location(name: str) -> str:
    """The storage location of a named table (for delta-rs / Polars readers)."""
    location = _session_for(name).sql(f"DESCRIBE DETAIL {name}").first()["location"]
    return location[len("file:"):] if location.startswith("file:") else location


# --------------------------------------------------------------------------- paths


def _uri(path: str) -> str:
    """An absolute location delta-rs and every executor agree on."""
    path = fs.local_path(str(path))
    if fs.is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(path)


def _escape_partition_value(value: str) -> str:
    # Hive/Spark escaping (ExternalCatalogUtils.escapePathName): '/', '..', '=', '%'
    # and control characters become %XX, so a value is always one safe path segment.
    out = []
    for ch in value:
        if ord(ch) < 0x20 or ch in '"#%\'*/:=?\\\x7f{[]^':
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def _partition_string(value: Any) -> str | None:
    """A partition value as the Delta protocol serialises it.

    Timestamps with a zone are ISO 8601 in UTC (``2024-01-02T03:04:05.678901Z``), those
    without one ``2024-01-02 03:04:05.678901``; dates ``2024-01-02``; booleans ``true``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def _partition_dir(values: Mapping[str, str | None]) -> str:
    return "/".join(
        f"{_escape_partition_value(k)}={'__HIVE_DEFAULT_PARTITION__' if v is None else _escape_partition_value(v)}"
        for k, v in values.items()
    )


# --------------------------------------------------------------------------- metadata


def _open(path: str, version: int | None = None):
    from deltalake import DeltaTable

    name = _named(path)
    if name is not None:
        if not table_exists(name):
            raise UserError(f"{name}: table not found")
        path = _named_location(name)
    uri = _uri(path)
    try:
        return DeltaTable(uri, version=version)
    except Exception as exc:  # delta-rs raises TableNotFoundError / DeltaError / OSError
        if not table_exists(path):
            raise UserError(f"{path}: not a Delta table (no _delta_log)") from None
        at = f" at version {version}" if version is not None else ""
        raise UserError(f"{path}: cannot open Delta table{at}: {bad_log_file(uri) or _without_backtrace(exc)}") from None


def _without_backtrace(exc: BaseException) -> str:
    """delta-rs's message without the native stack trace it appends (``0: <unknown> ...``)."""
    return re.split(r"\n\s*(?:Stack backtrace:\s*)?0: ", str(exc), maxsplit=1)[0].strip()


def bad_log_file(uri: str) -> str | None:
    """``<commit file>: line N is not valid JSON`` for the first unreadable commit of a local log."""
    if fs.is_remote(uri):
        return None
    log = os.path.join(uri, "_delta_log")
    for name in sorted(n for n in os.listdir(log) if n.endswith(".json")) if os.path.isdir(log) else []:
        with open(os.path.join(log, name), encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    if line.strip():
                        json.loads(line)
                except ValueError:
                    return f"{os.path.join(log, name)}: line {number} is not valid JSON (a truncated or corrupt commit)"
    return None


def table_exists(path: str) -> bool:
    """True when ``path`` holds a Delta table (a ``_delta_log`` with at least one commit)."""
    from deltalake import DeltaTable

    name = _named(path)
    if name is not None:
        return _session_for(name).catalog.tableExists(name)
    if not fs.is_remote(path) and os.path.isfile(fs.local_path(path)):
        return False  # a plain file (delta-rs would fail walking "<file>/_delta_log")
    return DeltaTable.is_deltatable(_uri(path))


def table_version(path: str) -> int | None:
    """The latest version of the table, or None when there is no table."""
    if not table_exists(path):
        return None
    name = _named(path)
    return _named_version(_session_for(name), name) if name else _open(path).version()


def table_rows(path: str, version: int | None = None) -> int | None:
    """The table's row count from its log's file statistics (no data read), or None when
    a file has no row count there (or ``path`` is a named table)."""
    if _named(path) is not None:
        return None
    counts = pa.table(_open(path, version).get_add_actions(flatten=True)).column("num_records").to_pylist()
    return None if any(c is None for c in counts) else int(sum(counts))


def table_schema(path: str, version: int | None = None) -> pa.Schema:
    """The table's schema as Arrow (partition columns included), at ``version`` (path tables) or the latest."""
    name = _named(path)
    if name is not None:
        from pyspark.sql.pandas.types import to_arrow_schema

        return delta_schema(to_arrow_schema(_session_for(name).table(name).schema, timezone="UTC", prefers_large_types=False))
    return _arrow_schema(_open(path, version))


def rust_readable(path: str, version: int | None = None) -> bool:
    """True when delta-rs can read the path table's rows (:func:`scan_table`) without Spark:
    not a named table, and no reader feature it lacks (deletion vectors, column mapping)."""
    return _named(path) is None and not _unsupported_features(_open(path, version))


def history(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Commits, newest first: ``version``, ``timestamp`` (ms), ``operation``, ``operationParameters``, ..."""
    name = _named(path)
    if name is not None:
        rows = _session_for(name).sql(f"DESCRIBE HISTORY {name}" + (f" LIMIT {int(limit)}" if limit else "")).collect()
        return [
            {**row.asDict(), "timestamp": int(row["timestamp"].timestamp() * 1000)}
            for row in rows
        ]
    return _open(path).history(limit)


def table_properties(path: str) -> dict[str, str]:
    """Custom properties set with ``write_*(properties=...)``.

    Path tables on both backends keep them in the table description as JSON; properties
    set as table ``configuration`` (``TBLPROPERTIES``) named ``pipelines.properties.<key>``
    are read too, and the description wins where both name a key. A named table keeps them
    as those ``TBLPROPERTIES`` only.
    """
    prefix = f"{_PROPERTIES_KEY}."
    name = _named(path)
    if name is not None:
        rows = _session_for(name).sql(f"SHOW TBLPROPERTIES {name}").collect()
        return {r["key"][len(prefix):]: r["value"] for r in rows if r["key"].startswith(prefix)}
    metadata = _open(path).metadata()
    props = {k[len(prefix):]: v for k, v in (metadata.configuration or {}).items() if k.startswith(prefix)}
    try:
        described = json.loads(metadata.description or "{}").get(_PROPERTIES_KEY, {})
        props.update(dict(described))
    except (ValueError, AttributeError):
        pass
    return props


def _arrow_schema(dt) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())


def _unsupported_features(dt) -> set[str]:
    """The table's reader features that delta-rs cannot read."""
    return set(dt.protocol().reader_features or []) & _UNSUPPORTED_READER_FEATURES


def _check_readable(dt, path: str) -> None:
    bad = _unsupported_features(dt)
    if bad:
        raise UserError(
            f"{path}: Delta reader features {sorted(bad)} need Spark's native Delta (run with the Delta jars or on Databricks)"
        )


# --------------------------------------------------------------------------- reads


def read_table(spark: SparkSession, path: str, *, version: int | None = None) -> DataFrame:
    """Read a Delta table as a Spark DataFrame.

    Parameters
    ----------
    spark : SparkSession
    path : str
        The table root.
    version : int, optional
        Time travel: the table as of this version.

    Notes
    -----
    On the delta-rs backend the files are those of the snapshot's add actions, read
    with the table's own schema (so files written before a column was added read it
    as null, and partition columns get their declared types). Orphaned files from a
    killed writer are never read.
    """
    name = _named(path)
    if name is not None:
        if not table_exists(name):
            raise UserError(f"{name}: table not found")
        return spark.sql(f"SELECT * FROM {name}" + (f" VERSION AS OF {int(version)}" if version is not None else ""))
    if backend(spark) == "native":
        if not table_exists(path):  # as on delta-rs: one line, not Spark's PATH_NOT_FOUND trace
            raise UserError(f"{path}: not a Delta table")
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        try:
            return reader.load(path)
        except Exception:
            # A damaged commit (cut short, or edited under its Hadoop .crc): one line naming it
            bad = bad_log_file(_uri(path))
            if bad is None:
                raise
            raise UserError(f"{path}: cannot open Delta table: {bad}") from None

    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    dt = _open(path, version)
    _check_readable(dt, path)
    arrow_schema = _arrow_schema(dt)
    spark_schema = from_arrow_schema(arrow_schema)
    files = dt.file_uris()
    if not files:
        return spark.createDataFrame([], spark_schema)
    partition_by = list(dt.metadata().partition_columns)
    columns = [quote(name) for name in arrow_schema.names]
    data_schema = from_arrow_schema(pa.schema([f for f in arrow_schema if f.name not in partition_by]))
    # recursiveFileLookup: no partition values from folder names (they are escaped, and
    # another writer may name folders differently); they come from the log.
    reader = spark.read.schema(data_schema).option("recursiveFileLookup", "true")
    if not partition_by:
        return reader.parquet(*files).select(*columns)
    return _union(
        [
            reader.parquet(*group).select(
                "*", *[F.lit(v).cast(spark_schema[c].dataType).alias(c) for c, v in zip(partition_by, values, strict=True)]
            ).select(*columns)
            for values, group in _files_by_partition(dt, _uri(path), partition_by).items()
        ]
    )


def _files_by_partition(dt, root: str, partition_by: Sequence[str]) -> dict[tuple, list[str]]:
    """The snapshot's file URIs grouped by their log ``partitionValues`` (a tuple in ``partition_by`` order)."""
    from urllib.parse import unquote

    actions = pa.table(dt.get_add_actions(flatten=True)).to_pydict()
    groups: dict[tuple, list[str]] = {}
    for i, rel in enumerate(actions["path"]):
        key = tuple(actions[f"partition.{c}"][i] for c in partition_by)
        # The log's paths are URI-encoded and relative to the root (or absolute URIs).
        groups.setdefault(key, []).append(rel if "://" in rel else f"{root}/{unquote(rel)}")
    return groups


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def scan_table(path: str, *, version: int | None = None) -> pl.LazyFrame:
    """Read a Delta table lazily with Polars (``polars.scan_delta``)."""
    import polars as pl

    name = _named(path)
    if name is not None and fs.is_remote(_named_location(name)):
        # Unity Catalog storage is Spark's to read; the tables read this way are small
        # (models, fit status, ledgers, metrics).
        return pl.from_arrow(read_table(_session_for(name), name, version=version).toArrow()).lazy()
    dt = _open(path, version)
    _check_readable(dt, path)
    return pl.scan_delta(dt)


# --------------------------------------------------------------------------- the file writer


def _delta_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type delta-rs stores for ``t``: timestamps in microseconds, zoned ones in "UTC"."""
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", "UTC" if t.tz else None)
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(pa.field(t.value_field.name, _delta_type(t.value_type), t.value_field.nullable))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _delta_type(f.type), f.nullable) for f in t])
    return t


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every type in the form Delta tables store."""
    return pa.schema([pa.field(f.name, _delta_type(f.type), f.nullable) for f in schema])



@dataclass(frozen=True)
class WrittenFile:
    """A Parquet file written under the table root, not yet committed."""

    path: str  # relative to the table root
    size: int
    partition_values: dict[str, str | None]
    num_records: int
    null_counts: dict[str, int]
    modification_time: int
    min_values: dict[str, Any] = field(default_factory=dict)
    max_values: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> str:
        """The add action's ``stats`` JSON."""
        return json.dumps(
            {
                "numRecords": self.num_records,
                "minValues": self.min_values,
                "maxValues": self.max_values,
                "nullCount": self.null_counts,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> WrittenFile:
        return cls(**json.loads(text))


class _FileWriter:
    """Streams Arrow batches into Parquet files under ``root``, one file set per partition.

    Partition columns are not stored in the files (Delta convention); their values go
    in the add action. Files roll over at ``target_file_bytes``.
    """

    def __init__(self, root: str, schema: pa.Schema, partition_by: Sequence[str], target_file_bytes: int) -> None:
        self.root = root
        self.partition_by = list(partition_by)
        self.data_schema = pa.schema([f for f in schema if f.name not in self.partition_by])
        self.target = target_file_bytes
        self.fs, self.base = _arrow_fs(root)
        self._open: dict[tuple, tuple[str, Any, Any, list[pa.RecordBatch], int, int]] = {}
        self.written: list[WrittenFile] = []
        self._floats = [f.name for f in self.data_schema if pa.types.is_floating(f.type)]
        self._nan: dict[str, set[str]] = {}  # file -> float columns that hold a NaN

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if table.num_rows == 0:
            return
        if not self.partition_by:
            self._append((), {}, table)
            return
        keys = table.select(self.partition_by)
        groups = keys.group_by(self.partition_by, use_threads=False).aggregate([])
        for i in range(groups.num_rows):
            values = {c: groups.column(c)[i].as_py() for c in self.partition_by}
            mask = None
            for c, v in values.items():
                m = pc.is_null(table.column(c)) if v is None else pc.equal(table.column(c), v)
                mask = m if mask is None else pc.and_(mask, m)
            part = table.filter(mask)
            self._append(tuple(values.items()), {c: _partition_string(v) for c, v in values.items()}, part)

    def _append(self, key: tuple, pvalues: dict[str, str | None], table: pa.Table) -> None:
        data = table.select(self.data_schema.names).cast(self.data_schema)
        state = self._open.get(key)
        if state is None:
            rel = "/".join(p for p in (_partition_dir(pvalues), f"part-{uuid.uuid4().hex}.parquet") if p)
            full = f"{self.base}/{rel}"
            self.fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
            stream = self.fs.open_output_stream(full)
            writer = pq.ParquetWriter(stream, self.data_schema, compression="snappy")
            state = (rel, stream, writer, [], 0, 0)
        rel, stream, writer, buffered, nbytes, nrows = state
        nan = self._nan.setdefault(rel, set())
        nan.update(c for c in self._floats if c not in nan and pc.any(pc.is_nan(data.column(c))).as_py())
        buffered = [*buffered, *data.to_batches()]
        nbytes += data.nbytes
        nrows += data.num_rows
        self._open[key] = (rel, stream, writer, buffered, nbytes, nrows)
        if nbytes >= _ROW_GROUP_BYTES:
            self._flush(key, pvalues)

    def _flush(self, key: tuple, pvalues: dict[str, str | None], *, final: bool = False) -> None:
        rel, stream, writer, buffered, nbytes, nrows = self._open[key]
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered, schema=self.data_schema))
        if final or stream.tell() >= self.target:
            writer.close()
            stream.close()
            del self._open[key]
            self._record(rel, pvalues or dict(key), nrows)
        else:
            self._open[key] = (rel, stream, writer, [], 0, nrows)

    def _record(self, rel: str, pvalues: Mapping[str, Any], nrows: int) -> None:
        full = f"{self.base}/{rel}"
        info = self.fs.get_file_info(full)
        meta = pq.read_metadata(full, filesystem=self.fs)
        mins, maxs = _min_max(meta, nan_free=set(self._floats) - self._nan.pop(rel, set()))
        self.written.append(
            WrittenFile(
                path=rel,
                size=info.size,
                partition_values={k: _partition_string(v) if not isinstance(v, str) else v for k, v in pvalues.items()},
                num_records=meta.num_rows,
                null_counts=_null_counts(meta),
                modification_time=int(time.time() * 1000),
                min_values=mins,
                max_values=maxs,
            )
        )

    def close(self) -> list[WrittenFile]:
        for key in list(self._open):
            self._flush(key, {c: _partition_string(v) for c, v in key}, final=True)
        return self.written

    def abort(self) -> None:
        for rel, stream, writer, *_ in self._open.values():
            try:
                writer.close()
                stream.close()
            finally:
                self.fs.delete_file(f"{self.base}/{rel}")
        self._open.clear()
        _delete_files(self.root, self.written)


def _arrow_fs(uri: str):
    """``(pyarrow filesystem, path in it)`` of a table root or folder (local paths as ``file://``)."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri if fs.is_remote(uri) else f"file://{uri}")


def _null_counts(meta) -> dict[str, int]:
    """Null counts of the top-level columns whose every row group records one.

    Nested leaves (``col.list.element``) say nothing about the column's own nulls, and a
    column without the statistic gets no entry: a missing count is safe for a Delta
    reader, a wrong one would make it skip files.
    """
    counts: dict[str, int] = {}
    missing: set[str] = set()
    for _, name, col in _top_level_chunks(meta):
        stats = col.statistics
        if stats is None or not stats.has_null_count:
            missing.add(name)
        else:
            counts[name] = counts.get(name, 0) + stats.null_count
    return {name: n for name, n in counts.items() if name not in missing}


def _top_level_chunks(meta) -> Iterator[tuple[Any, str, Any]]:
    """``(row group, column name, column chunk)`` of every top-level column in a Parquet footer."""
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for ci in range(group.num_columns):
            col = group.column(ci)
            if "." not in col.path_in_schema:  # nested leaves (``col.list.element``)
                yield group, col.path_in_schema, col


# Delta's own writer keeps string stats to a 32-character prefix.
_STATS_STRING_PREFIX = 32


def _min_max(meta, *, nan_free: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``minValues`` / ``maxValues`` of the top-level columns, from the Parquet footer.

    The types Delta collects stats for: integers, floats, dates, timestamps, strings
    (not booleans or binary). A column gets bounds only when every row group that holds a
    non-null value records them, so a bound can never exclude a row a reader looks for:
    timestamps are widened to milliseconds (the precision Delta's stats keep), a long
    string's max is left out, and a float column gets bounds only when it is in
    ``nan_free`` (Parquet's float statistics ignore NaN, which Spark sorts above every
    number).
    """
    lows: dict[str, Any] = {}
    highs: dict[str, Any] = {}
    unusable: set[str] = set()
    for group, name, col in _top_level_chunks(meta):
        stats = col.statistics
        if name in unusable:
            continue
        if stats is None or col.physical_type in ("BOOLEAN", "FIXED_LEN_BYTE_ARRAY") or (
            col.physical_type in ("FLOAT", "DOUBLE") and name not in nan_free
        ):
            unusable.add(name)
            continue
        if not stats.has_min_max:
            if not stats.has_null_count or stats.null_count != group.num_rows:
                unusable.add(name)  # values without bounds (an all-null group has none)
            continue
        if col.physical_type == "BYTE_ARRAY" and not isinstance(stats.min, str):
            unusable.add(name)  # binary
            continue
        low, high = stats.min, stats.max
        lows[name] = low if name not in lows else min(lows[name], low)
        highs[name] = high if name not in highs else max(highs[name], high)
    mins, maxs = {}, {}
    for name in set(lows) - unusable:
        low, high = _stats_value(lows[name], up=False), _stats_value(highs[name], up=True)
        if low is not None:
            mins[name] = low
        if high is not None:
            maxs[name] = high
    return mins, maxs


def _stats_value(value: Any, *, up: bool) -> Any:
    """A footer bound as Delta's stats JSON holds it, rounded outwards; ``None`` if it has no safe form."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime.datetime):
        spill = value.microsecond % 1000
        if spill:
            value += datetime.timedelta(microseconds=1000 - spill) if up else -datetime.timedelta(microseconds=spill)
        if value.tzinfo is not None:
            return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str):
        if len(value) <= _STATS_STRING_PREFIX:
            return value
        return None if up else value[:_STATS_STRING_PREFIX]
    if isinstance(value, int):
        return value
    return None


def _delete_files(root: str, files: Iterable[WrittenFile]) -> None:
    filesystem, base = _arrow_fs(root)
    for f in files:
        try:
            filesystem.delete_file(f"{base}/{f.path}")
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- the commit


def _commit(
    root: str,
    files: Sequence[WrittenFile],
    schema: pa.Schema,
    *,
    mode: Mode,
    partition_by: Sequence[str],
    replace_where: Mapping[str, Any] | None,
    properties: Mapping[str, str] | None,
) -> int:
    """One atomic delta-rs commit of ``files``. Returns the new table version."""
    from deltalake import CommitProperties, DeltaTable, Schema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, create_table_with_add_actions

    if mode not in ("append", "overwrite"):
        raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
    if replace_where and mode != "overwrite":
        raise ValueError("replace_where needs mode='overwrite'")
    for key in replace_where or {}:
        if key not in partition_by:
            raise ValueError(f"replace_where key {key!r} must be a partition column of {list(partition_by)}")

    actions = [
        AddAction(
            f.path,
            f.size,
            f.partition_values,
            f.modification_time,
            True,
            f.stats(),
        )
        for f in files
    ]
    delta_schema = Schema.from_arrow(schema)
    commit_props = CommitProperties(custom_metadata={"pipelines.writer": "pipelines.delta"})
    description = _description(properties) if properties else None

    if not DeltaTable.is_deltatable(root):
        try:
            create_table_with_add_actions(
                root,
                delta_schema,
                actions,
                mode="error",
                partition_by=list(partition_by) or None,
                description=description,
                commit_properties=commit_props,
            )
            return 0
        except Exception:
            # Another writer created the table first; commit against it below.
            if not DeltaTable.is_deltatable(root):
                raise
    dt = DeltaTable(root)
    existing = dt.metadata().partition_columns
    if mode == "append" and list(existing) != list(partition_by):
        raise UserError(f"{root}: table is partitioned by {existing}, the write by {list(partition_by)}")
    filters = [(k, "=", _partition_string(v)) for k, v in (replace_where or {}).items()] or None
    try:
        dt.create_write_transaction(
            actions,
            mode=mode,
            schema=delta_schema,
            partition_by=list(partition_by) or None,
            partition_filters=filters,
            commit_properties=commit_props,
        )
    except CommitFailedError as exc:  # optimistic concurrency: another writer's commit won
        raise ConflictError(f"{root}: a concurrent write committed first ({_without_backtrace(exc)}); "
                            "this run committed nothing, run it again") from None
    dt.update_incremental()
    if properties is not None and dict(properties) != table_properties(root):
        dt.alter.set_table_description(_description(properties))  # a metadata-only commit
        dt.update_incremental()
    return dt.version()


# --------------------------------------------------------------------------- writes


def write_arrow_batches(
    path: str,
    batches: Iterable[pa.RecordBatch | pa.Table],
    schema: pa.Schema,
    *,
    mode: Mode = "append",
    partition_by: Sequence[str] | None = None,
    replace_where: Mapping[str, Any] | None = None,
    properties: Mapping[str, str] | None = None,
    target_file_bytes: int = _DEFAULT_TARGET_FILE_BYTES,
) -> int:
    """Stream Arrow batches into a Delta table with one atomic commit (no Spark).

    Memory is bounded by one buffered row group per open partition. Returns the new
    table version. On any error the files written so far are deleted and nothing is
    committed.
    """
    name = _named(path)
    if name is not None:
        # Spark owns a named table's files: the batches (here already in driver memory,
        # e.g. a fitted model table) go through Spark's Delta writer.
        spark = _session_for(name)
        target = delta_schema(schema)  # e.g. Polars' large_string -> string, as the path writer does
        parts = [(t if isinstance(t, pa.Table) else pa.Table.from_batches([t])).cast(target) for t in batches]
        table = pa.concat_tables(parts) if parts else target.empty_table()
        return _write_native(spark.createDataFrame(table), name, mode=mode, partition_by=list(partition_by or []),
                             replace_where=replace_where, properties=properties)
    root = _uri(path)
    schema = delta_schema(schema)
    writer = _FileWriter(root, schema, partition_by or [], target_file_bytes)
    try:
        for batch in batches:
            writer.write(batch)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    try:
        return _commit(root, files, schema, mode=mode, partition_by=partition_by or [], replace_where=replace_where,
                       properties=properties)
    except ConflictError:
        _delete_files(root, files)  # never committed: nothing may keep them
        raise


def write_polars(
    df: pl.DataFrame | pa.Table,
    path: str,
    *,
    mode: Mode = "append",
    partition_by: Sequence[str] | None = None,
    replace_where: Mapping[str, Any] | None = None,
    properties: Mapping[str, str] | None = None,
) -> int:
    """Write a Polars DataFrame (or Arrow table) to Delta in one atomic commit. Returns the version."""
    table = df if isinstance(df, pa.Table) else df.to_arrow()
    return write_arrow_batches(
        path,
        table.to_batches(),
        table.schema,
        mode=mode,
        partition_by=partition_by,
        replace_where=replace_where,
        properties=properties,
    )


def write_table(
    df: DataFrame,
    path: str,
    *,
    mode: Mode = "append",
    partition_by: Sequence[str] | None = None,
    replace_where: Mapping[str, Any] | None = None,
    properties: Mapping[str, str] | None = None,
    target_file_bytes: int = _DEFAULT_TARGET_FILE_BYTES,
) -> int:
    """Write a Spark DataFrame to Delta without collecting it. Returns the new version.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    path : str
        Table root.
    mode : {"append", "overwrite"}
    partition_by : list of str, optional
    replace_where : mapping of partition column -> value, optional
        With ``mode="overwrite"``: replace only the rows of the matching partitions,
        atomically (e.g. ``{"column": "Amount"}``).
    properties : mapping of str -> str, optional
        Custom table properties (see :func:`table_properties`).
    target_file_bytes : int
        Files roll over at about this size (delta-rs backend).
    """
    partition_by = list(partition_by or [])
    if mode not in ("append", "overwrite"):
        raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
    spark = df.sparkSession
    name = _named(path)
    if name is not None or backend(spark) == "native":
        return _write_native(df, name or path, mode=mode, partition_by=partition_by, replace_where=replace_where,
                             properties=properties)

    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(
        df.schema, timezone=spark.conf.get("spark.sql.session.timeZone") or "UTC", prefers_large_types=False
    )
    if not partition_by:
        return _write_spark_parquet(df, path, delta_schema(schema), mode=mode, properties=properties)
    _register_sink(spark)
    options = {
        "path": _uri(path),
        "schema": delta_schema(schema).serialize().to_pybytes().hex(),
        "commit": json.dumps(
            {
                "mode": mode,
                "partition_by": partition_by,
                "replace_where": {k: _partition_string(v) for k, v in (replace_where or {}).items()},
                "properties": dict(properties) if properties is not None else None,
                "target_file_bytes": target_file_bytes,
            }
        ),
    }
    # "append" at the DataFrameWriter level: the sink's commit decides what is replaced.
    df.write.format(_SINK_NAME).options(**options).mode("append").save()
    return _open(path).version()


def _write_spark_parquet(
    df: DataFrame, path: str, schema: pa.Schema, *, mode: Mode, properties: Mapping[str, str] | None
) -> int:
    """Unpartitioned writes: Spark's own Parquet writer, then one delta-rs commit of its files.

    The files go to a fresh folder under the table root (``w-<uuid>/``; Spark's commit
    protocol stages them in ``_temporary`` and moves them there only if every task
    succeeded). Their footers give the add actions' row and null counts; then one atomic
    commit. Until that commit no reader sees them; on any failure the folder is deleted.
    Rows stay in the JVM end to end instead of crossing to Python workers to be
    written (the data source sink, still used for partitioned writes); see the ingest
    and tokenize sections of benchmarks/RESULTS.md for what that saved.
    """
    root = _uri(path)
    folder = f"w-{uuid.uuid4().hex}"
    target = f"{root.rstrip('/')}/{folder}"
    spark = df.sparkSession
    key = "spark.sql.parquet.outputTimestampType"
    saved = spark.conf.get(key, None)
    # Delta stores timestamps as INT64 microseconds; Spark's default would be INT96. The
    # jobs' sessions already say so (get_spark), so concurrent writes never touch the conf.
    if saved != "TIMESTAMP_MICROS":
        spark.conf.set(key, "TIMESTAMP_MICROS")
    try:
        try:
            # "error", not "errorifexists": the Spark Connect client accepts only the former.
            # No _SUCCESS marker: the table's folders hold only the files its log names.
            df.write.mode("error").option(_NO_SUCCESS_MARKER, "false").parquet(target)
        finally:
            if saved is None:
                spark.conf.unset(key)
            elif saved != "TIMESTAMP_MICROS":
                spark.conf.set(key, saved)
        files = _footers(target, folder)
        version = _commit(root, files, schema, mode=mode, partition_by=[], replace_where=None, properties=properties)
    except BaseException:
        # A commit that landed before a later step failed (e.g. the description update)
        # references these files: they must stay.
        if not (table_exists(root) and any(f"/{folder}/" in u for u in _open(root).file_uris())):
            _delete_tree(target)
        raise
    remove_orphan_folders(root)
    return version


def remove_orphan_folders(path: str, *, min_age_seconds: float = ORPHAN_MIN_AGE_SECONDS) -> list[str]:
    """Delete the ``w-<uuid>/`` folders of a table that no commit in its log references.

    A writer killed before its commit leaves such a folder (readers never see it). Every
    successful unpartitioned write calls this. A folder is kept while anything in it is
    younger than ``min_age_seconds``: it may belong to a writer that is still running.
    Folders referenced by any commit still in the log (time travel) are kept.

    Returns
    -------
    list of str
        The folders removed (relative to the table root).
    """
    import pyarrow.fs as pafs

    root = _uri(path)
    filesystem, base = _arrow_fs(root)
    folders = [i.base_name for i in filesystem.get_file_info(pafs.FileSelector(base))
               if i.type == pafs.FileType.Directory and i.base_name.startswith("w-")]
    orphans = sorted(set(folders) - _referenced_folders(filesystem, f"{base}/_delta_log"))
    cutoff = (time.time() - min_age_seconds) * 1e9
    removed = []
    for folder in orphans:
        infos = filesystem.get_file_info(pafs.FileSelector(f"{base}/{folder}", recursive=True))
        newest = max([i.mtime_ns or 0 for i in infos] + [filesystem.get_file_info(f"{base}/{folder}").mtime_ns or 0])
        if newest < cutoff:
            _delete_tree(f"{root.rstrip('/')}/{folder}")
            removed.append(folder)
    return removed


def _referenced_folders(filesystem, log: str) -> set[str]:
    """First path segments of every ``add`` in the log's commits and checkpoints."""
    import pyarrow.fs as pafs

    paths: list[str] = []
    for info in filesystem.get_file_info(pafs.FileSelector(log)):
        if info.base_name.endswith(".json"):
            with filesystem.open_input_stream(info.path) as stream:
                for line in stream.read().decode().splitlines():
                    add = json.loads(line).get("add") if line.strip() else None
                    if add:
                        paths.append(add["path"])
        elif ".checkpoint" in info.base_name and info.base_name.endswith(".parquet"):
            adds = pq.read_table(info.path, columns=["add"], filesystem=filesystem).column("add")
            paths += [a["path"] for a in adds.to_pylist() if a]
    return {p.split("/", 1)[0] for p in paths}


_NO_SUCCESS_MARKER = "mapreduce.fileoutputcommitter.marksuccessfuljobs"


def _footers(target: str, folder: str) -> list[WrittenFile]:
    """The add actions of the Parquet files Spark wrote under ``target`` (footers only, read in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.fs as pafs

    filesystem, base = _arrow_fs(target)
    infos = [i for i in filesystem.get_file_info(pafs.FileSelector(base)) if i.base_name.endswith(".parquet")]

    def one(info) -> WrittenFile:
        meta = pq.read_metadata(info.path, filesystem=filesystem)
        mins, maxs = _min_max(meta, nan_free=set())  # Spark's writer does not say whether a float column holds NaN
        return WrittenFile(
            path=f"{folder}/{info.base_name}",
            size=info.size,
            partition_values={},
            num_records=meta.num_rows,
            null_counts=_null_counts(meta),
            modification_time=int(info.mtime_ns // 1_000_000) if info.mtime_ns else int(time.time() * 1000),
            min_values=mins,
            max_values=maxs,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sorted(pool.map(one, infos), key=lambda f: f.path)


def _delete_tree(target: str) -> None:
    filesystem, base = _arrow_fs(target)
    try:
        filesystem.delete_dir(base)
    except (FileNotFoundError, OSError):
        pass


def _description(properties: Mapping[str, str]) -> str:
    """The table description that carries ``properties`` (on both backends)."""
    return json.dumps({_PROPERTIES_KEY: dict(properties)})


def _write_native(df, path, *, mode, partition_by, replace_where, properties) -> int:
    """Spark's own Delta writer; ``path`` is a table root or a ``catalog.schema.table`` name."""
    writer = df.write.format("delta").mode(mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if replace_where:
        writer = writer.option("replaceWhere", _sql_predicate(replace_where))
    elif mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    named = is_table_name(path)
    if named:
        _write_named(df, path, mode=mode, partition_by=partition_by, replace_where=replace_where)
    else:
        writer.save(path)
    spark = df.sparkSession
    table = path if named else "delta.`" + _uri(path).replace("`", "``") + "`"
    if properties is not None and dict(properties) != table_properties(path):
        if named:
            props = ", ".join(f"'{_PROPERTIES_KEY}.{k}' = '{_sql_escape(v)}'" for k, v in properties.items())
            spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ({props})")
        else:  # Delta's 'comment' property is the table description, where delta-rs keeps them too
            spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('comment' = '{_sql_escape(_description(properties))}')")
    return _named_version(spark, table)


def _write_named(df, name, *, mode, partition_by, replace_where) -> None:
    """Append / overwrite / overwrite-where into the table ``name`` with Spark's V2 writer.

    Spark's CREATE / REPLACE TABLE AS SELECT (``saveAsTable`` of a new table, or with
    overwrite) runs the query apart from the caller's plan and loses its ``Observation``
    metrics (ingest counts rows with one); a V2 append or overwrite into an existing
    table keeps them. So a missing table, or a full overwrite that changes its schema or
    partitioning, first becomes an empty table of the new shape (its own commit).
    """
    from pyspark.sql import functions as F

    spark = df.sparkSession
    replace = not spark.catalog.tableExists(name)
    if not replace and mode == "overwrite" and not replace_where:
        current = spark.table(name).schema
        columns = spark.sql(f"DESCRIBE DETAIL {name}").first()["partitionColumns"]
        replace = [(f.name, f.dataType) for f in current] != [(f.name, f.dataType) for f in df.schema] or list(columns) != list(partition_by)
    if replace:
        empty = spark.createDataFrame([], df.schema).write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        (empty.partitionBy(*partition_by) if partition_by else empty).saveAsTable(name)
    writer = df.writeTo(name)
    if mode == "append":
        writer.append()
        return
    condition = F.lit(True)
    for key, value in (replace_where or {}).items():
        condition = condition & (F.col(key).isNull() if value is None else F.col(key) == F.lit(value))
    writer.overwrite(condition)


def _sql_escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def _sql_predicate(replace_where: Mapping[str, Any]) -> str:
    parts = []
    for key, value in replace_where.items():
        column = quote(key)
        parts.append(f"{column} IS NULL" if value is None else f"{column} = '{_sql_escape(value)}'")
    return " AND ".join(parts)


# --------------------------------------------------------------------------- the Spark sink

_SINK_NAME = "pipelines_delta_rs"
_registered: set[int] = set()


def _register_sink(spark: SparkSession) -> None:
    key = id(spark)
    if key not in _registered:
        spark.dataSource.register(_sink_classes())
        _registered.add(key)


def _sink_classes():
    from pyspark.sql.datasource import DataSource, DataSourceArrowWriter, WriterCommitMessage

    @dataclass
    class Written(WriterCommitMessage):
        files: list[str]

    class Writer(DataSourceArrowWriter):
        def __init__(self, options: Mapping[str, str]) -> None:
            self.root = options["path"]
            self.schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(options["schema"])))
            self.commit_options = json.loads(options["commit"])

        def write(self, iterator: Iterator[pa.RecordBatch]) -> Written:
            opts = self.commit_options
            writer = _FileWriter(self.root, self.schema, opts["partition_by"], opts["target_file_bytes"])
            try:
                for batch in iterator:
                    writer.write(batch)
                return Written([f.to_json() for f in writer.close()])
            except BaseException:
                writer.abort()
                raise

        def commit(self, messages: list[Written | None]) -> None:
            opts = self.commit_options
            files = [WrittenFile.from_json(f) for m in messages if m is not None for f in m.files]
            _commit(
                self.root,
                files,
                self.schema,
                mode=opts["mode"],
                partition_by=opts["partition_by"],
                replace_where=opts["replace_where"] or None,
                properties=opts["properties"],
            )

        def abort(self, messages: list[Written | None]) -> None:
            _delete_files(self.root, [WrittenFile.from_json(f) for m in messages if m is not None for f in m.files])

    class Sink(DataSource):
        @classmethod
        def name(cls) -> str:
            return _SINK_NAME

        def writer(self, schema, overwrite: bool) -> Writer:
            return Writer(self.options)

    return Sink
