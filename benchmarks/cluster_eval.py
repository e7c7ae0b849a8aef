"""Benchmark: KMeans fit vs exact Calinski-Harabasz + Davies-Bouldin per k, and scikit-learn.

    python -m benchmarks.cluster_eval --rows 1000000 --k-max 10 --sklearn-rows 1000000

For each size, 8-feature Gaussian blobs (true k = 6) are generated in Spark
(pipelines.cluster.data.make_blobs) and written to Parquet. Then, per k:

- Spark: KMeans fit seconds, and the seconds of the two-pass CH + DB evaluation
  (pipelines.cluster.metrics.cluster_stats) on the fitted labels; the goal is CH+DB
  <= 15% of the fit.
- scikit-learn, in a separate process on the same Parquet file (it must hold all rows in
  memory): KMeans(n_init=1) + calinski_harabasz_score + davies_bouldin_score, with its
  peak RSS; a failure (memory, time) is recorded as such.

Prints one JSON line per measurement and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

TRUE_K = 6
DIMS = 8


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"


def generate(spark, rows: int, path: Path) -> None:
    from pipelines.cluster.data import make_blobs

    if not (path / "_SUCCESS").exists():  # a run killed mid-write leaves no _SUCCESS: write again
        blobs = make_blobs(spark, rows=rows, k=TRUE_K, dims=DIMS, seed=7, partitions=max(2, rows // 1_000_000))
        blobs.write.mode("overwrite").parquet(str(path))


def spark_sweep(spark, path: Path, ks: list[int]) -> list[dict]:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import VectorAssembler

    from pipelines.cluster.metrics import cluster_stats
    from pipelines.cluster.scores import calinski_harabasz_from_stats, davies_bouldin_from_stats

    df = spark.read.parquet(str(path))
    features = VectorAssembler(inputCols=[f"x{j}" for j in range(DIMS)], outputCol="features").transform(df)
    features = features.select("features").cache()
    rows = features.count()
    # Warm-up, untimed: start the Python workers and touch the cached input once, so the
    # first k is not charged for them (at 1M rows this was most of k = 2's CH+DB time).
    warm = KMeans(k=2, seed=42, maxIter=1, initSteps=1).fit(features.limit(10_000)).transform(features.limit(10_000))
    cluster_stats(warm, features_col="features", prediction_col="prediction")
    out = []
    for k in ks:
        t0 = time.perf_counter()
        model = KMeans(k=k, seed=42, maxIter=20, initSteps=2).fit(features)
        fit = time.perf_counter() - t0
        labelled = model.transform(features)
        t0 = time.perf_counter()
        stats = cluster_stats(labelled, features_col="features", prediction_col="prediction")
        ch, db = calinski_harabasz_from_stats(stats), davies_bouldin_from_stats(stats)
        evaluation = time.perf_counter() - t0
        rec = {"engine": "spark", "rows": rows, "k": k, "fit_s": round(fit, 2), "ch_db_s": round(evaluation, 2),
               "ratio": round(evaluation / fit, 3), "ch": ch, "db": db}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    features.unpersist()
    return out


_SKLEARN = """
import json, resource, sys, time
import numpy as np, pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
path, ks = sys.argv[1], [int(k) for k in sys.argv[2].split(",")]
t0 = time.perf_counter()
x = np.column_stack([c.to_numpy() for c in pq.read_table(path, columns=[f"x{j}" for j in range(8)]).columns])
load = time.perf_counter() - t0
for k in ks:
    t0 = time.perf_counter(); labels = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=42).fit_predict(x)
    fit = time.perf_counter() - t0
    t0 = time.perf_counter(); ch = calinski_harabasz_score(x, labels); db = davies_bouldin_score(x, labels)
    ev = time.perf_counter() - t0
    print(json.dumps({"engine": "sklearn", "rows": len(x), "k": k, "load_s": round(load, 2), "fit_s": round(fit, 2),
                      "ch_db_s": round(ev, 2), "ch": ch, "db": db,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)
"""


def sklearn_sweep(path: Path, ks: list[int], timeout: float) -> list[dict]:
    try:
        proc = subprocess.run([sys.executable, "-c", _SKLEARN, str(path), ",".join(map(str, ks))],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        lines = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        done = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
        return [*done, {"engine": "sklearn", "error": f"timed out after {timeout:.0f}s"}]
    done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        done.append({"engine": "sklearn", "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"})
    for rec in done:
        print(json.dumps(rec), flush=True)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--k-max", type=int, default=10)
    ap.add_argument("--sklearn-rows", type=int, nargs="*", default=[1_000_000])
    ap.add_argument("--spark-ks", action="append", default=[], metavar="ROWS:K,K,...",
                    help="for that row count, sweep only these k in Spark (e.g. 50000000:6); the default is 2..k-max")
    ap.add_argument("--sklearn-timeout", type=float, default=1800)
    ap.add_argument("--data", default="benchmarks/data/cluster_eval")
    ap.add_argument("--driver-memory", default="10g",
                    help="local Spark driver heap (the cached features: 10M rows x 8 doubles need > 1 GB)")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from pipelines.config import load_config
    from pipelines.spark import get_spark

    base = load_config(None).spark
    spark = get_spark(base.model_copy(update={"conf": {**base.conf, "spark.driver.memory": args.driver_memory}}))
    ks = list(range(2, args.k_max + 1))
    print(f"# machine: {_machine()}; command: {' '.join(sys.argv)}", flush=True)
    only = {int(rows): [int(k) for k in ks_text.split(",")] for rows, ks_text in (i.split(":", 1) for i in args.spark_ks)}
    results = []
    for rows in args.rows:
        path = Path(args.data) / f"blobs_{rows}"
        generate(spark, rows, path)
        spark_ks = only.get(rows, ks)
        results += spark_sweep(spark, path, spark_ks)
        if rows in args.sklearn_rows:
            results += sklearn_sweep(path, ks, args.sklearn_timeout)

    print("\n| engine | rows | k | fit s | CH+DB s | CH+DB / fit | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['engine']} | | | {r['error']} | | | |")
            continue
        ratio = r.get("ratio", round(r["ch_db_s"] / r["fit_s"], 3) if r["fit_s"] else "")
        print(f"| {r['engine']} | {r['rows']:,} | {r['k']} | {r['fit_s']} | {r['ch_db_s']} | {ratio} | {r.get('peak_rss_mb', '')} |")
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"\nSpark driver (Python) peak RSS: {driver_rss} MB")


if __name__ == "__main__":
    main()
