"""Benchmark: ingest CSV and Parquet to bronze Delta vs a plain Spark copy of the same input.

    python -m benchmarks.ingest --rows 1000000 [--rows 10000000] [--data-dir benchmarks/data]

For each size it writes one CSV file (about 70 bytes a row, so 10M rows is about 0.7 GB)
and the same rows as one Parquet file, then times, in the same Spark session:

- ``copy``: ``spark.read.csv(header) / spark.read.parquet`` -> ``write.parquet`` (no types, no checks);
- ``ingest``: ``jobs/ingest.py`` (types inferred from a sample, every field checked, row ids,
  counts, Delta commit), once with ``--no-multiline`` (the same CSV reader as the copy, split
  across tasks) and once with the default ``multiline`` (quoted newlines allowed; one task per file).
- ``floor`` (``--floor``): the copy plus only what the issue requires on top of it, each in its
  cheapest form: the three metadata columns and one special-value count pass (:func:`_floor`).

It prints one line per run (seconds, rows/s, ratio to the copy, peak RSS of the Python
driver and of the JVM driver, sampled every 50 ms) and a Markdown table for
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from contextlib import contextmanager, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def make_data(rows: int, folder: Path, *, chunk: int = 1_000_000, seed: int = 0) -> tuple[Path, Path]:
    """One CSV and one Parquet file with the same ``rows`` rows (id, 5 doubles, a category, a date)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = folder / f"data_{rows}.csv", folder / f"data_{rows}.parquet"
    if csv_path.exists() and parquet_path.exists():
        return csv_path, parquet_path
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), *[(f"x{i}", pa.float64()) for i in range(5)],
                        ("category", pa.string()), ("day", pa.date32())])
    cats = np.array(["alpha", "beta", "gamma", "delta", "epsilon"])
    with pacsv.CSVWriter(str(csv_path), schema) as cw, pq.ParquetWriter(str(parquet_path), schema) as pw:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            table = pa.table(
                {
                    "id": np.arange(start, start + n, dtype=np.int64),
                    **{f"x{i}": rng.normal(size=n).round(6) for i in range(5)},
                    "category": cats[rng.integers(0, len(cats), size=n)],
                    "day": (np.datetime64("2024-01-01") + rng.integers(0, 365, size=n)).astype("datetime64[D]"),
                },
                schema=schema,
            )
            cw.write_table(table)
            pw.write_table(table)
    return csv_path, parquet_path


class PeakRss:
    """Peak RSS of this (Python driver) process and of its JVM child, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.python, self.jvm = interval, 0, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.python = max(self.python, me.memory_info().rss)
            jvm = sum(c.memory_info().rss for c in me.children(recursive=True) if "java" in c.name().lower())
            self.jvm = max(self.jvm, jvm)
            time.sleep(self.interval)

    @contextmanager
    def measure(self):
        self.python = self.jvm = 0
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


@contextmanager
def _plain_parquet_writes(*, enabled: bool):
    """Diagnostic: the ingest plan unchanged, but written by Spark's JVM Parquet writer, not the Delta sink.

    The difference to a normal ingest is the cost of the Delta write path; the difference
    to the copy is the cost of the checks, ids and counts.
    """
    if not enabled:
        yield
        return
    from pipelines.ingest import stage

    real = stage._write_counted

    def write_parquet(df, path, *, mode, **_):
        df.write.mode(mode).parquet(path)
        return df.sparkSession.read.parquet(path).count()

    real_read = stage.delta.read_table
    stage._write_counted = write_parquet
    stage.delta.read_table = lambda spark, path, **_: spark.read.parquet(path)  # bronze is plain Parquet here
    try:
        yield
    finally:
        stage._write_counted = real
        stage.delta.read_table = real_read


def _floor(reader, source: str, out: str) -> None:
    """The copy plus only what ingest must add, each in its cheapest form: no typing, no checks.

    ``_row_id`` from ``monotonically_increasing_id()``, ``_source_file`` and ``_ingested_at``
    as literals (one file), written by the same Parquet writer; then one aggregate pass
    over the written columns counting null / empty / NaN / +-inf per column, as ingest's
    run summary must. What ingest costs beyond this is the typing, checking and counting.
    """
    from pyspark.sql import functions as F

    reader.select(
        "*", F.monotonically_increasing_id().alias("_row_id"), F.lit(source).alias("_source_file"),
        F.current_timestamp().alias("_ingested_at"),
    ).write.mode("overwrite").parquet(out)
    written = reader.sparkSession.read.parquet(out)
    aggs = []
    for field in written.schema.fields:
        c = F.col(f"`{field.name}`")
        aggs.append(F.count_if(c.isNull()))
        if field.dataType.typeName() == "string":
            aggs.append(F.count_if(c == ""))
        if field.dataType.typeName() in ("double", "float"):
            aggs += [F.count_if(F.isnan(c)), F.count_if(c == float("inf")), F.count_if(c == float("-inf"))]
    written.agg(*aggs).collect()  # one row of counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per input (repeatable); default 1000000")
    parser.add_argument("--data-dir", default=str(ROOT / "benchmarks" / "data"))
    parser.add_argument("--skip-multiline", action="store_true", help="do not time the default multiline CSV ingest")
    parser.add_argument("--diagnose", action="store_true",
                        help="also time ingest with its table writes replaced by Spark's own Parquet writer")
    parser.add_argument("--floor", action="store_true",
                        help="also time the copy plus only what the issue requires on top of it: the three "
                             "metadata columns (cheapest forms) and a special-value count pass")
    args = parser.parse_args(argv)
    sizes = args.rows or [1_000_000]

    from jobs.ingest import main as ingest_main
    from pipelines.spark import get_spark

    spark = get_spark()
    spark.sparkContext.setLogLevel("ERROR")
    cores = spark.sparkContext.defaultParallelism
    print(f"machine: {platform.node()} {platform.machine()} {psutil.cpu_count()} CPUs (Spark {spark.sparkContext.master}, "
          f"parallelism {cores}), {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, load {os.getloadavg()[0]:.1f}; "
          f"Spark {spark.version}, Python {platform.python_version()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    peak = PeakRss()
    results = []
    work = Path(args.data_dir) / "runs"
    # Warm-up (JIT, Python workers, data source registration) so the first timed run is not penalised.
    warm_csv, warm_parquet = make_data(10_000, Path(args.data_dir))
    with redirect_stdout(StringIO()):
        for fmt, path in (("csv", warm_csv), ("parquet", warm_parquet)):
            spark.read.option("header", True).csv(str(warm_csv)).write.mode("overwrite").parquet(str(work / "copy"))
            ingest_main(["--source", str(path), "--format", fmt, "--output", str(work)])
    for rows in sizes:
        csv_path, parquet_path = make_data(rows, Path(args.data_dir))
        for fmt, path in (("csv", csv_path), ("parquet", parquet_path)):
            size_mb = path.stat().st_size / 2**20
            flags = ["--no-multiline"] if fmt == "csv" else []
            runs = [("copy", None), ("ingest", flags)]
            if args.floor:
                runs.insert(1, ("floor: copy + 3 metadata columns + special-value pass", None))
            if fmt == "csv" and not args.skip_multiline:
                runs.append(("ingest (multiline)", []))
            if args.diagnose:
                runs.append(("ingest, plain Parquet instead of Delta", flags))
            copy_seconds = None
            for label, flags in runs:
                shutil.rmtree(work, ignore_errors=True)
                with peak.measure():
                    t0 = time.perf_counter()
                    if flags is None:
                        reader = spark.read.option("header", True).csv(str(path)) if fmt == "csv" else spark.read.parquet(str(path))
                        if label.startswith("floor"):
                            _floor(reader, str(path), str(work / "copy"))
                        else:
                            reader.write.mode("overwrite").parquet(str(work / "copy"))
                        detail = ""
                    else:
                        out = StringIO()
                        with redirect_stdout(out), _plain_parquet_writes(enabled="plain Parquet" in label):
                            code = ingest_main(["--source", str(path), "--format", fmt, "--output", str(work), *flags])
                        summary = json.loads(out.getvalue().strip().splitlines()[-1])
                        if code != 0 or summary["counts"]["rows_written"] != rows:
                            raise SystemExit(f"ingest failed: {summary.get('error')} {summary['counts']}")
                        detail = " ".join(f"{k}={v:.1f}s" for k, v in summary["timings"].items())
                    seconds = time.perf_counter() - t0
                copy_seconds = seconds if label == "copy" else copy_seconds
                ratio = seconds / copy_seconds
                line = {
                    "rows": rows, "format": fmt, "input_mb": round(size_mb, 1), "run": label,
                    "seconds": round(seconds, 1), "rows_per_s": int(rows / seconds), "vs_copy": round(ratio, 2),
                    "peak_python_mb": round(peak.python / 2**20), "peak_jvm_mb": round(peak.jvm / 2**20),
                }
                results.append(line)
                print(json.dumps(line), detail, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print("\n| rows | input | run | seconds | rows/s | vs copy | peak RSS Python driver | peak RSS JVM driver |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['format']} {r['input_mb']} MB | {r['run']} | {r['seconds']} | {r['rows_per_s']:,} | "
              f"{r['vs_copy']}x | {r['peak_python_mb']} MB | {r['peak_jvm_mb']} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
