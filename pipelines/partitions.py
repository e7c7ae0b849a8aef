"""The per-partition mechanism: one Polars kernel, two engines.

A *kernel* is a pure function ``polars.DataFrame -> polars.DataFrame`` that is
row-local: each output row depends only on its own input row (and on fitted
parameters closed over as plain data). Because of that, the batch boundaries do not
matter, and the same kernel gives the same rows whichever engine runs it:

- :func:`spark_map`: Spark runs it per Arrow batch with ``mapInArrow``, spread over
  the cluster;
- :func:`polars_map`: no Spark at all; a Delta table (or Parquet files) is streamed
  batch by batch through the kernel into a Delta table.

Neither engine brings the data to the driver; memory is bounded by the batch size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from pipelines import delta

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

Kernel = Callable[[pl.DataFrame], pl.DataFrame]
DEFAULT_BATCH_ROWS = 131_072


def _to_arrow(frame: pl.DataFrame, schema: pa.Schema | None) -> pa.Table:
    # Plain (not view / large) Arrow types: what Spark's Arrow reader and Delta expect.
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    return table if schema is None else table.select(schema.names).cast(schema)


def spark_map(df: DataFrame, kernel: Kernel, schema: StructType | str) -> DataFrame:
    """Apply ``kernel`` to every Arrow batch of ``df`` with ``mapInArrow``.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    kernel : callable
        ``polars.DataFrame -> polars.DataFrame``, row-local.
    schema : StructType or DDL string
        The kernel's output schema; its output is cast to it.
    """
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType, _parse_datatype_string

    struct = schema if isinstance(schema, StructType) else _parse_datatype_string(schema)
    tz = df.sparkSession.conf.get("spark.sql.session.timeZone") or "UTC"
    arrow_schema = to_arrow_schema(struct, timezone=tz, prefers_large_types=False)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield from _to_arrow(kernel(pl.from_arrow(batch)), arrow_schema).to_batches()

    return df.mapInArrow(run, struct)


def _source_batches(source: str, columns: Sequence[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.dataset as ds

    if delta.table_exists(source):
        dataset = delta._open(source).to_pyarrow_dataset()
    else:
        dataset = ds.dataset(delta._uri(source), format="parquet")
    # Small read-ahead: the default prefetches many fragments and batches, which made the
    # driver's memory grow with the table instead of staying at a few batches.
    yield from dataset.to_batches(
        columns=list(columns) if columns else None, batch_size=batch_rows, fragment_readahead=1, batch_readahead=2
    )


def _ahead(items: Iterator[pa.Table], *, depth: int) -> Iterator[pa.Table]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    An exception in the producer is raised in the consumer; if the consumer stops early
    (an error while writing), the producer is told to stop and is not waited on beyond
    its current item.
    """
    import queue
    import threading

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

    thread = threading.Thread(target=produce, name="polars_map-kernel", daemon=True)
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


def polars_map(
    source_path: str,
    kernel: Kernel,
    out_path: str,
    *,
    mode: delta.Mode = "overwrite",
    partition_by: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> int:
    """Stream ``source_path`` (Delta table or Parquet files) through ``kernel`` into a Delta table.

    Parameters
    ----------
    source_path : str
        A Delta table root, or a Parquet file / folder.
    kernel : callable
        ``polars.DataFrame -> polars.DataFrame``, row-local.
    out_path : str
        The output Delta table, written in one atomic commit.
    mode : {"overwrite", "append"}
    partition_by : list of str, optional
    columns : list of str, optional
        Read only these source columns.
    schema : pyarrow.Schema, optional
        The output schema; needed only when the source may be empty.
    batch_rows : int
        Rows per batch, which bounds memory.

    Returns
    -------
    int
        Rows written.
    """
    written = 0

    def outputs() -> Iterator[pa.Table]:
        nonlocal written
        for batch in _source_batches(source_path, columns, batch_rows):
            if batch.num_rows:
                table = _to_arrow(kernel(pl.from_arrow(batch)), schema)
                written += table.num_rows
                yield table

    # The kernel runs one batch ahead of the writer, in a thread: Polars and the Parquet
    # encoder both release the GIL, so computing batch i+1 overlaps writing batch i.
    stream = _ahead(outputs(), depth=2)
    first = next(stream, None)
    if first is None and schema is None:
        raise ValueError(f"{source_path}: source is empty and no output schema was given")
    out_schema = schema or first.schema
    batches = itertools.chain([first] if first is not None else [], stream)
    delta.write_arrow_batches(out_path, batches, out_schema, mode=mode, partition_by=partition_by)
    return written
