"""Benchmark gmm_fit: seconds per column, peak driver memory, log-likelihood vs peers.

    PYTHONPATH=. .venv/bin/python benchmarks/gmm_fit.py --rows 1000000 [--rows 10000000 ...]
        [--spark-ml-max-rows 1000000] [--reference-max-rows 1000000] [--workdir /tmp/gmm_bench]

For each size, a two-column table is generated in Spark (``multimodal``: four normals of
very different scales; ``heavy``: lognormal mixed with a Student-t(3)) and written to
Delta. Then, on the same data in the same run:

- ``gmm_fit`` (this project), ``--mode mle`` and ``--mode bayesian``, through the job itself;
- Spark ML ``GaussianMixture(k=10, maxIter=100)`` per column (up to ``--spark-ml-max-rows``);
- scikit-learn ``GaussianMixture(10, init_params="kmeans", max_iter=100)`` (the quality bar's
  reference) and RDT ``ClusterBasedNormalizer(max_clusters=10).fit`` (up to
  ``--reference-max-rows``; both need the column in driver memory, which is how they work).

Every model's mean log-likelihood per row (ours: the kept mixture) is evaluated over the full column with the same
distributed pass (:func:`pipelines.gmm.fit.mean_log_likelihood`). Peak RSS is sampled every
0.2 s for the driver's Python process and, separately, its JVM. An untimed warm-up pass
starts Spark's Python workers first (``--no-warmup`` to include that start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peak_rss import PeakRSS  # noqa: E402

COLUMNS = ("multimodal", "heavy")
K = 10


def generate(spark, path: str, rows: int, seed: int) -> None:
    """Two synthetic columns written to Delta by Spark tasks (nothing collected)."""
    from pipelines import delta

    u, z, z1, z2, z3 = (f"{f}({seed + i})" for i, f in enumerate(["rand", "randn", "randn", "randn", "randn"]))
    multimodal = (
        f"CASE WHEN {u} < 0.35 THEN -20 + 2 * {z} WHEN {u} < 0.60 THEN 5 + 0.5 * {z} "
        f"WHEN {u} < 0.85 THEN 40 + 8 * {z} ELSE 200 + 30 * {z} END"
    )
    heavy = (
        f"CASE WHEN rand({seed + 9}) < 0.7 THEN exp(3 + 1.2 * {z1}) "
        f"ELSE 50 + 20 * {z2} / sqrt(({z3} * {z3} + randn({seed + 7}) * randn({seed + 7}) "
        f"+ randn({seed + 8}) * randn({seed + 8})) / 3) END"
    )
    df = spark.range(rows).selectExpr("id AS _row_id", f"{multimodal} AS multimodal", f"{heavy} AS heavy")
    delta.write_table(df, path, mode="overwrite")


def mixture_from_model(model):
    """The kept mixture (weights renormalised when scored): what the transform uses, so the
    comparison with scikit-learn's 10 components is like with like."""
    from pipelines.gmm.em import Mixture

    g = [m for m in model.kept if m.kind == "gaussian"]
    w = np.array([m.weight for m in g])
    return Mixture(weights=w / w.sum(), means=np.array([m.mean for m in g]),
                   stds=np.array([m.std for m in g]))


def run_ours(spark, src: str, fit_dir: str, mode: str) -> tuple[dict, dict]:
    from jobs.gmm_fit import main
    from pipelines.gmm.fit import load_models, read_status

    shutil.rmtree(fit_dir, ignore_errors=True)
    t0 = time.monotonic()
    code = main(["--input", src, "--fit-dir", fit_dir, "--columns", ",".join(COLUMNS), "--mode", mode,
                 "--max-components", str(K)])
    seconds = time.monotonic() - t0
    assert code == 0, f"gmm_fit exited {code}"
    models = load_models(fit_dir)
    status = read_status(fit_dir)
    return (
        {c: mixture_from_model(models[c]) for c in COLUMNS},
        {"total_s": seconds, "per_column_s": seconds / len(COLUMNS),
         "n_modes": {c: models[c].n_modes for c in COLUMNS}, "status_s": {c: status[c]["seconds"] for c in COLUMNS}},
    )


def bench_size(spark, rows: int, args) -> list[dict]:
    from pipelines import delta
    from pipelines.gmm.em import Mixture
    from pipelines.gmm.fit import mean_log_likelihood, spark_ml_mixture

    work = Path(args.workdir)
    src = str(work / f"data_{rows}")
    if not delta.table_exists(src):
        t0 = time.monotonic()
        generate(spark, src, rows, args.seed)
        print(f"# generated {rows} rows in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    df = delta.read_table(spark, src)
    results = []
    if not args.no_warmup:  # untimed: start the Python workers once, as a long-lived cluster has them
        from pipelines.gmm.fit import summarize
        from pipelines.gmm.summary import ColumnSpec

        summarize(df.limit(10_000), [ColumnSpec(c, "continuous") for c in COLUMNS], max_bins=256)

    def record(name, mixtures, seconds, rss=None, extra=None):
        ll = mean_log_likelihood(df, mixtures)
        for c in COLUMNS:
            if c in mixtures:
                results.append({"rows": rows, "method": name, "column": c, "fit_s": round(seconds[c], 2),
                                "mean_loglik": round(ll[c], 7), "n_components": int(mixtures[c].weights.size),
                                **({"peak_python_rss_mb": rss[0], "peak_jvm_rss_mb": rss[1]} if rss else {}),
                                **(extra or {}).get(c, {})})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    for mode in ("mle", "bayesian"):
        with PeakRSS() as peak:
            mixtures, info = run_ours(spark, src, str(work / f"fit_{rows}_{mode}"), mode)
        rss = (peak.python >> 20, peak.jvm >> 20)
        record(f"gmm_fit --mode {mode}", mixtures, {c: info["per_column_s"] for c in COLUMNS}, rss,
               {c: {"kept_modes": info["n_modes"][c]} for c in COLUMNS})

    if rows <= args.spark_ml_max_rows:
        mixtures, seconds = {}, {}
        for c in COLUMNS:
            t0 = time.monotonic()
            mixtures[c] = spark_ml_mixture(df, c, (), k=K, max_iter=100, seed=args.seed)
            seconds[c] = time.monotonic() - t0
        record("Spark ML GaussianMixture(k=10, maxIter=100)", mixtures, seconds)

    if rows <= args.reference_max_rows:
        import pandas as pd
        from sklearn.mixture import GaussianMixture

        data = {c: delta.scan_table(src).select(c).collect()[c].to_numpy() for c in COLUMNS}  # peers need it in memory
        mixtures, seconds = {}, {}
        for c in COLUMNS:
            t0 = time.monotonic()
            gm = GaussianMixture(K, init_params="kmeans", max_iter=100, random_state=args.seed).fit(data[c][:, None])
            seconds[c] = time.monotonic() - t0
            mixtures[c] = Mixture(weights=gm.weights_, means=gm.means_[:, 0], stds=np.sqrt(gm.covariances_[:, 0, 0]))
        record("scikit-learn GaussianMixture(10, kmeans, max_iter=100)", mixtures, seconds)
        try:
            from rdt.transformers.numerical import ClusterBasedNormalizer
        except ImportError:
            print("# rdt not installed: RDT skipped", file=sys.stderr)
        else:
            mixtures, seconds, kept = {}, {}, {}
            for c in COLUMNS:
                cbn = ClusterBasedNormalizer(max_clusters=K, weight_threshold=0.005)
                frame = pd.DataFrame({c: data[c]})
                t0 = time.monotonic()
                cbn.fit(frame, c)
                seconds[c] = time.monotonic() - t0
                bgm = cbn._bgm_transformer
                mixtures[c] = Mixture(weights=bgm.weights_, means=bgm.means_[:, 0],
                                      stds=np.sqrt(bgm.covariances_[:, 0, 0]))
                kept[c] = {"kept_modes": int(np.sum(cbn.valid_component_indicator))}
            record("RDT ClusterBasedNormalizer.fit (BGM, DP prior 1e-3)", mixtures, seconds, extra=kept)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, action="append", help="rows per size (repeatable); default 1000000")
    p.add_argument("--spark-ml-max-rows", type=int, default=1_000_000)
    p.add_argument("--reference-max-rows", type=int, default=1_000_000)
    p.add_argument("--workdir", default="/tmp/gmm_fit_bench")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-warmup", action="store_true", help="time the first job of the session with worker start-up")
    p.add_argument("--driver-memory", default="8g",
                   help="local Spark driver heap: Spark ML caches its input; with the 1 GB default, 10M rows "
                        "spill to disk and every EM iteration re-reads them")
    args = p.parse_args(argv)
    sizes = args.rows or [1_000_000]
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pipelines.config import load_config
    from pipelines.spark import get_spark

    base = load_config(None).spark
    spark = get_spark(base.model_copy(update={"conf": {**base.conf, "spark.driver.memory": args.driver_memory}}))
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    for rows in sizes:
        results += bench_size(spark, rows, args)
    print(f"machine: {platform.node()} {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total >> 30} GiB RAM, Spark master {spark.sparkContext.master}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    keys = ["rows", "method", "column", "fit_s", "mean_loglik", "n_components", "kept_modes",
            "peak_python_rss_mb", "peak_jvm_rss_mb"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
