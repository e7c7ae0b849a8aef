"""Tokenise / detokenise throughput against a plain Parquet read+write of the same data.

    python benchmarks/tokenize_job.py --rows 2000000 [--columns 10] [--bins 256] [--work DIR] [--master local[2]]

Generates ``rows x columns`` doubles (+ ``_row_id``) as a Delta table, then in the same
run measures, in values/s (rows x columns / seconds):

- baseline: Spark reads the table's Parquet files and writes them as plain Parquet;
  and Polars ``scan_parquet`` -> ``sink_parquet`` (the baseline of both engines, which
  read and write the files with pyarrow);
- the tokenize job with ``--engine spark``, ``--engine local`` and the Spark engine's
  ``mapInArrow`` fallback (``engine.spark_path: mapInArrow``): the tokens pass alone, and
  the whole job including the two fit passes;
- the detokenize job the same three ways.

Prints machine, rows, command, the figures and the peak RSS of the driver process and of
the Spark driver JVM (sampled with psutil), and a Markdown table for benchmarks/results.
"""

from __future__ import annotations

import os
import sys

# Run as a script, the repository root is not on sys.path (for benchmarks.peak_rss).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from benchmarks.peak_rss import PeakRSS  # noqa: E402


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _job(argv: list[str]) -> dict:
    from contextlib import redirect_stdout
    from io import StringIO

    from jobs.tokenize_job import main

    out = StringIO()
    with redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"tokenize {argv} exited {code}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--bins", type=int, default=256)
    parser.add_argument("--work", default="/tmp/bench_tokenize")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    args = parser.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import functions as F

    from pipelines import delta

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    # The session the jobs get locally (conf/local.yaml: Arrow batches of 100k rows, UTC,
    # INT64 timestamps), with the benchmark's master and driver memory.
    from pipelines.config import load_config
    from pipelines.spark import get_spark

    base = load_config(None).spark
    settings = base.model_copy(update={"master": args.master,
                                       "conf": {**base.conf, "spark.driver.memory": args.driver_memory}})
    spark = get_spark(settings)
    spark.sparkContext.setLogLevel("ERROR")
    names = [f"c{i}" for i in range(args.columns)]
    values = args.rows * args.columns

    # Mixed shapes: normal, log-normal, heavy ties (rounded), uniform; a few NaN.
    shapes = [
        lambda i: F.randn(seed=i) * 3 + 1,
        lambda i: F.exp(F.randn(seed=i)),
        lambda i: F.round(F.randn(seed=i), 1),
        lambda i: F.rand(seed=i) * 1000,
    ]
    src = str(work / "src")
    cols = [F.col("id").alias("_row_id")] + [shapes[i % 4](i).alias(n) for i, n in enumerate(names)]
    df = spark.range(args.rows).select(*cols)
    df = df.withColumn("c0", F.when(F.col("_row_id") % 1000 == 7, F.lit(float("nan"))).otherwise(F.col("c0")))
    t_gen = _timed(lambda: delta.write_table(df, src, mode="overwrite"))
    files = len(delta._open(src).file_uris())

    results: dict[str, float] = {}
    with PeakRSS() as rss:
        # Baselines: plain Parquet read + write of the same files, no Delta, no Python.
        # The first write also warms the JVM up (JIT), so it is not the one measured.
        src_df = delta.read_table(spark, src)
        src_df.write.mode("overwrite").parquet(str(work / "warmup"))
        results["parquet_spark"] = _timed(lambda: src_df.write.mode("overwrite").parquet(str(work / "plain")))

        import polars as pl

        results["parquet_polars"] = _timed(
            lambda: pl.scan_parquet(delta._open(src).file_uris()).sink_parquet(str(work / "plain_polars.parquet"))
        )
        summaries = {}
        fallback = work / "mapInArrow.yaml"
        fallback.write_text("engine:\n  spark_path: mapInArrow\n")
        for engine in ("spark", "local", "mapInArrow"):
            out = str(work / f"out_{engine}")
            flags = ["--engine", "spark", "--config", str(fallback)] if engine == "mapInArrow" else ["--engine", engine]
            t = _timed(
                lambda out=out, engine=engine, flags=flags: summaries.__setitem__(
                    f"tok_{engine}",
                    _job(["--input", src, "--columns", ",".join(names), "--output", out, "--bins", str(args.bins), *flags]),
                )
            )
            results[f"tokenize_job_{engine}"] = t
            results[f"tokenize_pass_{engine}"] = summaries[f"tok_{engine}"]["timings"]["tokenize"]
            results[f"fit_edges_{engine}"] = summaries[f"tok_{engine}"]["timings"]["fit_edges"]
            results[f"fit_bins_{engine}"] = summaries[f"tok_{engine}"]["timings"]["fit_bins"]
            argv = ["--detokenize", "--tokenizer", f"{out}/tokenizer", "--input", f"{out}/tokens", "--output", f"{out}/back",
                    *flags]
            t = _timed(lambda argv=argv, engine=engine: summaries.__setitem__(f"detok_{engine}", _job(argv)))
            results[f"detokenize_job_{engine}"] = t
            results[f"detokenize_pass_{engine}"] = summaries[f"detok_{engine}"]["timings"]["detokenize"]

        # The mapInArrow fallback's floor: the same rows through mapInArrow and back untouched
        # (no kernel), written as plain Parquet: what the JVM <-> Python Arrow round trip costs.
        from pipelines.engine import spark_map

        identity = spark_map(src_df, lambda frame: frame, delta.table_schema(src))
        results["identity_native_parquet"] = _timed(lambda: identity.write.mode("overwrite").parquet(str(work / "id_pq")))

    rmse = {c: (v["rmse_mean"], v["rmse_centre"], v["effective_bins"]) for c, v in summaries["tok_spark"]["columns"].items()}
    base_spark, base_polars = values / results["parquet_spark"], values / results["parquet_polars"]
    print(f"machine: {platform.node()} {platform.machine()} {psutil.cpu_count()} cpus, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.python_version()}, master={args.master}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"rows: {args.rows:,}  columns: {args.columns}  values: {values:,}  bins: {args.bins}  source files: {files}  "
          f"(generate+write {t_gen:.1f}s)")
    print(f"peak RSS: driver python {rss.python / 2**20:.0f} MiB, driver JVM {rss.jvm / 2**20:.0f} MiB")
    print()
    print("| step | engine | seconds | values/s | vs plain Parquet read+write (Polars for the file engines, Spark for mapInArrow) |")
    print("|---|---|---:|---:|---:|")
    rows = [
        ("plain Parquet read+write", "spark", "parquet_spark", base_spark),
        ("plain Parquet read+write", "polars", "parquet_polars", base_polars),
        ("tokens pass (read, kernel, write Delta)", "spark", "tokenize_pass_spark", base_polars),
        ("tokens pass (read, kernel, write Delta)", "local", "tokenize_pass_local", base_polars),
        ("tokens pass (read, kernel, write Delta)", "mapInArrow", "tokenize_pass_mapInArrow", base_spark),
        ("fit pass 1: edges (percentile_approx, Spark)", "spark", "fit_edges_spark", base_spark),
        ("fit pass 2: bin statistics (reduce)", "spark", "fit_bins_spark", base_polars),
        ("fit pass 2: bin statistics (reduce)", "local", "fit_bins_local", base_polars),
        ("fit pass 2: bin statistics (reduce)", "mapInArrow", "fit_bins_mapInArrow", base_spark),
        ("tokenize job, all passes", "spark", "tokenize_job_spark", base_polars),
        ("tokenize job, all passes", "local", "tokenize_job_local", base_polars),
        ("tokenize job, all passes", "mapInArrow", "tokenize_job_mapInArrow", base_spark),
        ("detokenise pass (read, kernel, write Delta, token counts)", "spark", "detokenize_pass_spark", base_polars),
        ("detokenise pass (read, kernel, write Delta, token counts)", "local", "detokenize_pass_local", base_polars),
        ("detokenise pass (read, kernel, write Delta, token counts)", "mapInArrow", "detokenize_pass_mapInArrow", base_spark),
        ("detokenize job", "spark", "detokenize_job_spark", base_polars),
        ("detokenize job", "local", "detokenize_job_local", base_polars),
        ("detokenize job", "mapInArrow", "detokenize_job_mapInArrow", base_spark),
        ("mapInArrow round trip, no kernel, plain Parquet output", "spark", "identity_native_parquet", base_spark),
    ]
    for label, engine, key, base in rows:
        rate = values / results[key]
        print(f"| {label} | {engine} | {results[key]:.1f} | {rate:,.0f} | {rate / base:.0%} |")
    print()
    print("| column | effective bins | RMSE bin means | RMSE bin centres |")
    print("|---|---:|---:|---:|")
    for c, (m, ce, nb) in rmse.items():
        print(f"| {c} | {nb} | {m:.4g} | {ce:.4g} |")
    print(json.dumps({"rows": args.rows, "columns": args.columns, "seconds": results}))


if __name__ == "__main__":
    main()
