"""The engine: Spark schedules Polars over Parquet files.

A *unit* of work is one Parquet file of the input table's active file list (or a run of
row groups of a big file), with the partition values the Delta log gives it. A *task*
reads its unit with pyarrow batch by batch, runs a row-local Polars kernel on each
batch, and then either

- **map**: writes the kernel's rows as Parquet files (unique names) into each output
  table's folder and returns their add actions; the driver commits each output table
  once, so a failed or killed task's files are never referenced; or
- **reduce**: returns a small partial result (sums, counts, summaries) that the driver
  merges in unit order.

Two schedulers run the same tasks over the same units:

``spark``
    One Spark task per unit (``spark.range(n, numPartitions=n).mapInArrow``, a
    DataFrame, so it also runs on Spark Connect); each returns one small row. No data
    row passes through the JVM.
``local``
    A pool of local threads (Polars, pyarrow and numpy release the GIL), no Spark.

So the kernel, the units and the written rows are the same whichever scheduler runs:
outputs are the same data, and partials merge in the same order.

Where Spark's own Delta must write (the native backend: Databricks, named tables)
there is no public "commit these files" call, so the ``spark`` engine falls back to
``mapInArrow`` over ``read_table`` and Spark's Delta writer (same kernel, one pass per
output table plus one for the partials); :attr:`MapResult.path` says which path ran.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import reduce as _fold
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import delta, fs
from pipelines.columns import quote
from pipelines.errors import DataFileError, UserError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

Kernel = Callable[[pl.DataFrame], pl.DataFrame]
EngineName = Literal["spark", "local"]
SparkPath = Literal["auto", "files", "mapInArrow"]
DEFAULT_BATCH_ROWS = 131_072
# Files above this size are split into runs of row groups, so one big file still
# spreads over several cores.
DEFAULT_SPLIT_BYTES = 256 << 20
_RESULT_DDL = "unit INT, error STRING, user_error BOOLEAN, read_error BOOLEAN, files STRING, partial BINARY, rows BIGINT, polars_threads INT"


def engine_name(name: str) -> EngineName:
    """The engine a setting names: ``spark``, or ``local`` (``polars`` is an alias of ``local``)."""
    names = {"spark": "spark", "local": "local", "polars": "local"}
    if name not in names:
        raise UserError(f"engine: unknown engine {name!r} (spark, local or polars)")
    return names[name]  # type: ignore[return-value]


# --------------------------------------------------------------------------- schemas


def arrow_schema(schema: pl.Schema | dict[str, pl.DataType]) -> pa.Schema:
    """The plain (not view / large) Arrow schema of a Polars schema: what Spark and Delta expect."""
    return pl.DataFrame(schema=dict(schema)).to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def spark_schema(schema: pl.Schema | dict[str, pl.DataType] | pa.Schema):
    """The Spark ``StructType`` of a Polars or Arrow schema (the one schema of an artifact)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema if isinstance(schema, pa.Schema) else arrow_schema(schema))


def to_arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` as Arrow with exactly ``schema``'s columns, in its order and types."""
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest()).select(schema.names).cast(schema)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Unit:
    """One task's input: a Parquet file (or some of its row groups) and its partition values."""

    file: str
    partition_values: tuple[tuple[str, str | None], ...] = ()
    row_groups: tuple[int, ...] | None = None

    def label(self) -> str:
        if self.row_groups is None:
            return self.file
        return f"{self.file} (row groups {self.row_groups[0]}..{self.row_groups[-1]})"


@dataclass(frozen=True)
class Source:
    """A table's files as units, and the table's schema."""

    path: str
    schema: pa.Schema
    units: tuple[Unit, ...]
    version: int | None = None

    @property
    def partition_columns(self) -> list[str]:
        return [k for k, _ in self.units[0].partition_values] if self.units else []


def source(path: str, *, split_bytes: int = DEFAULT_SPLIT_BYTES, version: int | None = None) -> Source:
    """The units of a Delta table's active files (from its log), or of Parquet files.

    Parameters
    ----------
    path : str
        A Delta table root, a Parquet file, or a folder of Parquet files.
    split_bytes : int
        Files larger than this are split into runs of row groups of about this size.
    version : int, optional
        A Delta table's files as of this version (time travel); default its latest.

    Raises
    ------
    UserError
        The path does not exist or is neither a Delta table nor Parquet.
    """
    if delta.table_exists(path):
        dt = delta._open(path, version)
        delta._check_readable(dt, path)
        schema = delta._arrow_schema(dt)
        actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        partition_cols = list(dt.metadata().partition_columns)
        files = [
            (uri, a["size_bytes"], tuple((c, a.get(f"partition.{c}")) for c in partition_cols))
            for uri, a in zip(dt.file_uris(), actions, strict=True)
        ]
        version = dt.version()
    else:
        if not fs.exists(path):
            raise UserError(f"{path}: input not found")
        import pyarrow.dataset as ds

        try:
            dataset = ds.dataset(delta._uri(path), format="parquet")
            schema = dataset.schema
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"{path}: not a Delta table or Parquet files ({exc})") from None
        files = [(f, None, ()) for f in dataset.files]
        version = None
    units: list[Unit] = []
    # Sorted by path: the unit order (and so the merge order of partials) is the data's, not the log's.
    for file, size, values in sorted(files):
        units.extend(_split(file, size, values, split_bytes))
    return Source(path, schema, tuple(units), version)


def _split(file: str, size: int | None, values, split_bytes: int) -> list[Unit]:
    if size is not None and size <= split_bytes:
        return [Unit(file, values)]
    meta = pq.ParquetFile(file).metadata
    runs, current, current_bytes = [], [], 0
    for i in range(meta.num_row_groups):
        current.append(i)
        current_bytes += meta.row_group(i).total_byte_size
        if current_bytes >= split_bytes:
            runs.append(tuple(current))
            current, current_bytes = [], 0
    if current:
        runs.append(tuple(current))
    if len(runs) <= 1:
        return [Unit(file, values)]
    return [Unit(file, values, run) for run in runs]


def _read_unit(unit: Unit, schema: pa.Schema, columns: Sequence[str] | None, batch_rows: int) -> Iterator[pl.DataFrame]:
    """The unit's rows, batch by batch, with the table's types and its partition columns."""
    wanted = [schema.field(c) for c in (columns or schema.names)]
    partition = dict(unit.partition_values)
    try:
        handle = pq.ParquetFile(unit.file)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(unit, exc) from None
    in_file = set(handle.schema_arrow.names)
    stored = [f.name for f in wanted if f.name in in_file and f.name not in partition]
    for batch in _batches(unit, handle.iter_batches(batch_size=batch_rows, row_groups=unit.row_groups, columns=stored)):
        n = batch.num_rows
        if not n:
            continue
        arrays = []
        for f in wanted:
            if f.name in partition:  # the log's value (typed, or a string) as the table's type
                arrays.append(pa.repeat(pa.array([partition[f.name]]).cast(f.type)[0], n))
            elif f.name in in_file:
                arrays.append(batch.column(f.name).cast(f.type))
            else:  # a file written before the column was added reads it as null
                arrays.append(pa.nulls(n, f.type))
        yield pl.from_arrow(pa.RecordBatch.from_arrays(arrays, schema=pa.schema(wanted)))


def _batches(unit: Unit, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches``, with a failed read of the file turned into :class:`DataFileError`."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(unit, exc) from None
        yield batch


def _unreadable(unit: Unit, exc: BaseException) -> DataFileError:
    """The one line a job prints for a data file it cannot read (as for Spark's own reads)."""
    path = re.sub(r"^file:(//)?", "", unit.file)
    return DataFileError(f"{path}: cannot read this data file ({type(exc).__name__}: {' '.join(str(exc).split())})")


# --------------------------------------------------------------------------- what a task does


@dataclass(frozen=True)
class Sink:
    """An output table of a map: its folder, written schema and partitioning.

    ``select`` turns the kernel's output into this table's rows (default: the
    schema's columns).
    """

    path: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    select: Kernel | None = None


@dataclass(frozen=True)
class Reducer:
    """A small partial result per batch, and how two partials merge.

    ``partial(frame)`` returns JSON data or a (small) ``polars.DataFrame``;
    ``merge(a, b)`` combines two of them. Partials are merged batch by batch within a
    unit and then unit by unit in unit order on the driver, so the result does not
    depend on the scheduler.
    """

    partial: Callable[[pl.DataFrame], Any]
    merge: Callable[[Any, Any], Any]


@dataclass(frozen=True)
class _Task:
    source: Source
    kernel: Kernel | None
    sinks: tuple[Sink, ...]
    reducer: Reducer | None
    columns: tuple[str, ...] | None
    batch_rows: int
    target_file_bytes: int


@dataclass
class _Result:
    unit: int
    error: str | None = None
    user_error: bool = False
    read_error: bool = False  # the unit's data file could not be read (an I/O fault)
    files: list[list[str]] = field(default_factory=list)
    partial: Any = None
    rows: int = 0
    polars_threads: int = 0


def _encode_partial(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, pl.DataFrame):
        import io

        buf = io.BytesIO()
        value.write_ipc(buf)
        return b"P" + buf.getvalue()
    return b"J" + json.dumps(value).encode()


def _decode_partial(data: bytes | None) -> Any:
    if data is None:
        return None
    if data[:1] == b"P":
        import io

        return pl.read_ipc(io.BytesIO(data[1:]))
    return json.loads(data[1:].decode())


def _ahead(items: Iterator[Any], *, depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    Reading and the kernel (batch i+1) overlap writing (batch i): Polars, pyarrow and
    the Parquet encoder release the GIL. An exception in the producer is raised in the
    consumer; if the consumer stops early, the producer stops after its current item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as exc:  # handed to the consumer
            buffer.put((done, exc))

    thread = threading.Thread(target=produce, name="engine-kernel", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = buffer.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()


def _run_task(task: _Task, index: int) -> _Result:
    """Run one unit: read, kernel, write the sinks' files and/or fold the partials.

    Any exception becomes an error result naming the unit's file; the files written so
    far are deleted (they were never committed either way).
    """
    unit = task.source.units[index]
    result = _Result(index, polars_threads=pl.thread_pool_size())
    schemas = [delta.delta_schema(s.schema) for s in task.sinks]
    writers = [delta._FileWriter(delta._uri(s.path), schema, s.partition_by, task.target_file_bytes)
               for s, schema in zip(task.sinks, schemas, strict=True)]

    def computed() -> Iterator[pl.DataFrame]:
        for frame in _read_unit(unit, task.source.schema, task.columns, task.batch_rows):
            yield frame if task.kernel is None else task.kernel(frame)

    try:
        for out in _ahead(computed(), depth=2):
            result.rows += out.height
            if task.reducer is not None:
                part = task.reducer.partial(out)
                result.partial = part if result.partial is None else task.reducer.merge(result.partial, part)
            for sink, schema, writer in zip(task.sinks, schemas, writers, strict=True):
                writer.write(to_arrow(out if sink.select is None else sink.select(out), schema))
        result.files = [[f.to_json() for f in w.close()] for w in writers]
    except Exception as exc:
        for w in writers:
            w.abort()
        if isinstance(exc, DataFileError):  # already names the file
            result.error = str(exc)
        elif isinstance(exc, UserError):
            result.error = f"{unit.label()}: {exc}"
        else:
            result.error = f"{unit.label()}: {type(exc).__name__}: {exc}"
        result.user_error = isinstance(exc, UserError)
        result.read_error = isinstance(exc, DataFileError)
        result.files, result.partial = [], None
    return result


# --------------------------------------------------------------------------- schedulers


@dataclass
class MapResult:
    """What a map or reduce returns to the stage."""

    rows: int
    partial: Any
    path: str  # "files" (tasks wrote the files, one delta-rs commit) or "mapInArrow"
    units: int = 0
    polars_threads: int = 0
    versions: list[int] = field(default_factory=list)


class Engine:
    """Runs maps and reduces over a table's files with the ``spark`` or ``local`` scheduler.

    Parameters
    ----------
    name : {"spark", "local"}
    spark : SparkSession, optional
        Required for ``spark``.
    workers : int, optional
        Local threads (default: the machine's cores).
    spark_path : {"auto", "files", "mapInArrow"}
        ``auto``: files, unless Spark's Delta must write a table (named, or on Databricks): mapInArrow.
    batch_rows : int
        Rows per batch within a task (bounds a task's memory).
    """

    def __init__(
        self,
        name: EngineName,
        spark: SparkSession | None = None,
        *,
        workers: int | None = None,
        spark_path: SparkPath = "auto",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        split_bytes: int = DEFAULT_SPLIT_BYTES,
    ) -> None:
        self.name = engine_name(name)
        if self.name == "spark" and spark is None:
            raise UserError("engine 'spark' needs a SparkSession; use --engine local")
        self.spark = spark
        self.workers = workers or os.cpu_count() or 1
        self.spark_path = spark_path
        self.batch_rows = batch_rows
        self.split_bytes = split_bytes

    def __repr__(self) -> str:
        return f"Engine({self.name!r})"

    # ---------------------------------------------------------------- primitives

    def map(
        self,
        source_path: str,
        kernel: Kernel,
        sinks: Sequence[Sink],
        *,
        columns: Sequence[str] | None = None,
        reducer: Reducer | None = None,
        target_file_bytes: int = delta._DEFAULT_TARGET_FILE_BYTES,
        version: int | None = None,
    ) -> MapResult:
        """Run a row-local ``kernel`` over ``source_path``'s files into each of ``sinks``.

        Each sink is overwritten in one commit. With ``reducer``, its partials of the
        kernel's output are merged into :attr:`MapResult.partial` in the same pass.
        ``version``: a Delta source's rows as of that version (the files path only).

        Raises
        ------
        UserError
            A kernel raised a UserError (the message names the file).
        DataFileError
            A data file of the source could not be read (the message names it).
        RuntimeError
            A kernel raised anything else (the message names the file). Nothing is committed.
        """
        if self._path(source_path, *(sink.path for sink in sinks)) == "mapInArrow":
            if version is not None:
                raise ValueError("map at a version needs the files path")
            return self._map_in_arrow(source_path, kernel, sinks, columns=columns, reducer=reducer)
        src = source(source_path, split_bytes=self.split_bytes, version=version)
        task = _Task(src, kernel, tuple(sinks), reducer, tuple(columns) if columns else None, self.batch_rows,
                     target_file_bytes)
        results = self._run(task)
        versions = []
        for i, sink in enumerate(sinks):
            files = [delta.WrittenFile.from_json(f) for r in results for f in r.files[i]]
            root = delta._uri(sink.path)
            schema = delta.delta_schema(sink.schema)
            versions.append(delta._commit(root, files, schema, mode="overwrite", partition_by=list(sink.partition_by),
                                          replace_where=None, properties=None))
        return self._result(results, reducer, "files", versions)

    def reduce(self, source_path: str, reducer: Reducer, *, columns: Sequence[str] | None = None,
               kernel: Kernel | None = None, version: int | None = None) -> MapResult:
        """Fold ``reducer`` over ``source_path``'s rows (optionally after a row-local ``kernel``).

        Each task folds its unit's batches; the driver merges the units' partials in
        unit order. Only the partials leave the tasks. ``version``: a Delta table's rows
        as of that version (the files path only).
        """
        if self._path(source_path) == "mapInArrow":
            if version is not None:
                raise ValueError("reduce at a version needs the files path")
            return self._map_in_arrow(source_path, kernel, (), columns=columns, reducer=reducer)
        src = source(source_path, split_bytes=self.split_bytes, version=version)
        task = _Task(src, kernel, (), reducer, tuple(columns) if columns else None, self.batch_rows,
                     delta._DEFAULT_TARGET_FILE_BYTES)
        return self._result(self._run(task), reducer, "files", [])

    def reads_files(self, *tables: str) -> bool:
        """Whether this engine's tasks read (and write) ``tables``' files themselves."""
        return self._path(*tables) == "files"

    # ---------------------------------------------------------------- internals

    def _path(self, *tables: str) -> str:
        """``files`` wherever the tasks may read ``tables`` and the driver commit them itself.

        A delta-rs commit is a standard Delta commit, which Spark's own Delta reads, so path
        tables take the file tasks on either backend. Spark's Delta must write named
        (catalog) tables, and path tables on Databricks, whose Delta owns their commits.
        """
        if self.name == "local" or self.spark_path == "files":
            return "files"
        if self.spark_path == "mapInArrow" or any(delta._named(t) is not None for t in tables):
            return "mapInArrow"
        if delta.backend(self.spark) == "native" and os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            return "mapInArrow"
        return "files"

    @staticmethod
    def _result(results: list[_Result], reducer: Reducer | None, path: str, versions: list[int]) -> MapResult:
        partials = [r.partial for r in results if r.partial is not None]
        merged = _fold(reducer.merge, partials) if reducer is not None and partials else None
        return MapResult(rows=sum(r.rows for r in results), partial=merged, path=path, units=len(results),
                         polars_threads=max((r.polars_threads for r in results), default=0), versions=versions)

    def _run(self, task: _Task) -> list[_Result]:
        n = len(task.source.units)
        if n == 0:
            results: list[_Result] = []
        elif self.name == "local":
            with ThreadPoolExecutor(max_workers=min(self.workers, n), thread_name_prefix="engine") as pool:
                results = list(pool.map(lambda i: _run_task(task, i), range(n)))
        else:
            results = self._run_spark(task, n)
        failed = [r for r in results if r.error is not None]
        if failed:
            for r in results:
                for sink, files in zip(task.sinks, r.files, strict=False):
                    delta._delete_files(delta._uri(sink.path), [delta.WrittenFile.from_json(f) for f in files])
            first = failed[0]
            more = f" (and {len(failed) - 1} more file(s))" if len(failed) > 1 else ""
            if first.user_error:
                raise UserError(first.error + more)
            if first.read_error:
                raise DataFileError(first.error + more)
            raise RuntimeError(first.error + more)
        return results

    def _run_spark(self, task: _Task, n: int) -> list[_Result]:
        spark = self.spark
        _bound_worker_threads(spark)

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            cpus = _task_cpus(TaskContext.get())
            for batch in batches:
                for index in batch.column(0).to_pylist():
                    with _blas_limit(cpus):
                        r = _run_task(task, index)
                    yield pa.RecordBatch.from_pylist([{
                        "unit": r.unit, "error": r.error, "user_error": r.user_error, "read_error": r.read_error, "files": json.dumps(r.files),
                        "partial": _encode_partial(r.partial), "rows": r.rows, "polars_threads": r.polars_threads,
                    }], schema=_result_arrow_schema())

        rows = spark.range(0, n, numPartitions=n).mapInArrow(run, _RESULT_DDL).collect()  # one small row per unit
        return sorted(
            (_Result(r["unit"], r["error"], bool(r["user_error"]), bool(r["read_error"]), json.loads(r["files"]),
                     _decode_partial(r["partial"]), int(r["rows"]), int(r["polars_threads"])) for r in rows),
            key=lambda r: r.unit,
        )

    def _map_in_arrow(self, source_path: str, kernel: Kernel | None, sinks: Sequence[Sink], *,
                      columns: Sequence[str] | None, reducer: Reducer | None) -> MapResult:
        """The fallback: Spark reads, ``mapInArrow`` runs the kernel, Spark's Delta writer writes."""
        df = read_spark(self.spark, source_path)
        if columns:
            df = df.select(*[quote(c) for c in columns])
        for sink in sinks:
            def rows(frame: pl.DataFrame, sink: Sink = sink) -> pl.DataFrame:
                out = frame if kernel is None else kernel(frame)
                return out if sink.select is None else sink.select(out)

            delta.write_table(spark_map(df, rows, sink.schema), sink.path, mode="overwrite",
                              partition_by=list(sink.partition_by) or None)
        partial, n_rows = None, None
        if reducer is not None or not sinks:
            def fold(frame: pl.DataFrame) -> pl.DataFrame:
                out = frame if kernel is None else kernel(frame)
                part = None if reducer is None else _encode_partial(reducer.partial(out))
                return pl.DataFrame({"rows": [out.height], "partial": [part]}, schema={"rows": pl.Int64, "partial": pl.Binary})

            parts = spark_map(df, fold, pa.schema([("rows", pa.int64()), ("partial", pa.binary())])).collect()
            n_rows = sum(r["rows"] for r in parts)  # one small row per Arrow batch
            if reducer is not None and parts:
                partial = _fold(reducer.merge, [_decode_partial(r["partial"]) for r in parts])
        if n_rows is None:
            n_rows = delta.read_table(self.spark, sinks[0].path).count()
        return MapResult(rows=n_rows, partial=partial, path="mapInArrow")


def _result_arrow_schema() -> pa.Schema:
    return pa.schema([("unit", pa.int32()), ("error", pa.string()), ("user_error", pa.bool_()), ("read_error", pa.bool_()),
                      ("files", pa.string()),
                      ("partial", pa.binary()), ("rows", pa.int64()), ("polars_threads", pa.int32())])


def _task_cpus(context) -> int:
    try:
        return max(1, int(context.cpus()))
    except Exception:  # no TaskContext (or an old Spark): one core
        return 1


class _blas_limit:
    """BLAS/OpenMP threads of numpy bounded to the task's cores while a task runs."""

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus
        self._limits = None

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # threadpoolctl is optional: then BLAS keeps its own default
            return self
        self._limits = threadpool_limits(self.cpus)
        return self

    def __exit__(self, *exc):
        if self._limits is not None:
            self._limits.unregister()


def _bound_worker_threads(spark: SparkSession) -> None:
    """Python workers started from now on size Polars' pool to ``spark.task.cpus``.

    Polars sizes its thread pool once, at import, from ``POLARS_MAX_THREADS``; without
    it every task's Polars would use all of the executor's cores. ``spark.executorEnv``
    set at start-up wins; the SparkContext's environment (classic Spark) is what the
    Python workers of later jobs are started with.
    """
    context = getattr(spark, "_sc", None)  # Spark Connect: set it in the cluster's environment instead
    env = getattr(context, "environment", None)
    if env is None or "POLARS_MAX_THREADS" in env:
        return
    env["POLARS_MAX_THREADS"] = spark.conf.get("spark.task.cpus", "1") or "1"


# --------------------------------------------------------------------------- Spark helpers


def read_spark(spark: SparkSession, path: str) -> DataFrame:
    """A Delta table (through :func:`pipelines.delta.read_table`) or Parquet files as a Spark DataFrame."""
    if delta.table_exists(path):
        return delta.read_table(spark, path)
    if not fs.exists(path):
        raise UserError(f"{path}: input not found")
    return spark.read.parquet(path)


def spark_map(df: DataFrame, kernel: Kernel, schema: pa.Schema) -> DataFrame:
    """``kernel`` over every Arrow batch of ``df`` with ``mapInArrow`` (the fallback path), cast to ``schema``."""
    arrow = delta.delta_schema(schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield from to_arrow(kernel(pl.from_arrow(batch)), arrow).to_batches()

    return df.mapInArrow(run, spark_schema(arrow))


def record(details: dict[str, Any], step: str, engine: Engine, result: MapResult) -> None:
    """Note in a run's ``details["engine"]`` which engine and path ran ``step``, over how many units."""
    info = details.setdefault("engine", {"name": engine.name, "steps": {}})
    info["steps"][step] = {"path": result.path, "units": result.units, "rows": result.rows,
                           "polars_threads": result.polars_threads}
