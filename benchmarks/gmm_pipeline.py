"""GMM pipeline benchmark: fit + transform + inverse on 2 columns, vs RDT's ClusterBasedNormalizer.

Protocol (issue 6): a heavy-tailed, amount-like column and a bimodal one; Delta in,
Delta out; rows/s, seconds per stage and peak memory; RDT's transform +
reverse_transform at ``--rdt-rows`` on the same data and the same mixture.

    PYTHONPATH=. .venv/bin/python benchmarks/gmm_pipeline.py --rows 1000000 [--engine both|all|spark|local|mapInArrow] [--rdt-rows 1000000]

The fit: ``jobs/gmm_fit.py`` when it is in the tree (``--fit auto``/``job``); otherwise
(``--fit peer``) the model is RDT's own fit on a ``--fit-sample`` row sample (a
``BayesianGaussianMixture`` as RDT configures it), and only transform + inverse are
ours and timed. Either way RDT and we transform with the same mixture parameters.
Each engine first runs once, untimed, on a 20k-row table (Spark warm-up).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak_rss import PeakRSS  # noqa: E402
from pipelines import delta  # noqa: E402
from pipelines.gmm import transform as stage  # noqa: E402
from pipelines.gmm.model import ColumnModel, Mode  # noqa: E402
from pipelines.runs import Run  # noqa: E402

COLUMNS = ("amount", "bimodal")
CHUNK = 1_000_000
WARMUP_ROWS = 20_000


def generate_chunk(start: int, n: int, seed: int) -> pa.Table:
    """Rows ``start .. start+n``: deterministic per chunk whatever the total size."""
    rng = np.random.default_rng([seed, start])
    tail = rng.random(n) < 0.03
    amount = np.where(tail, rng.lognormal(7.0, 0.8, n), rng.lognormal(3.0, 1.3, n)).round(2)  # cents, like Amount
    bimodal = np.where(rng.random(n) < 0.6, rng.normal(-2.0, 0.7, n), rng.normal(3.0, 1.2, n))
    return pa.table({"_row_id": np.arange(start, start + n, dtype=np.int64), "amount": amount, "bimodal": bimodal})


def write_bronze(path: str, rows: int, seed: int) -> None:
    # One commit per chunk of at most CHUNK rows (and at least 4 files), as an ingest of
    # several source files would leave it, so Spark has splits for every core.
    chunk = min(CHUNK, max(1, -(-rows // 4)))
    for start in range(0, rows, chunk):
        delta.write_polars(generate_chunk(start, min(chunk, rows - start), seed), path, mode="append")


def peer_models(sample: pa.Table, *, max_clusters: int = 10) -> tuple[list[ColumnModel], dict, dict]:
    """RDT's fit (ClusterBasedNormalizer) on ``sample``: its transformers, our models, fit seconds."""
    import pandas as pd
    from rdt.transformers import ClusterBasedNormalizer

    transformers, models, seconds = {}, [], {}
    for c in COLUMNS:
        cbn = ClusterBasedNormalizer(max_clusters=max_clusters, missing_value_generation=None)
        t0 = time.perf_counter()
        cbn.fit(pd.DataFrame({c: sample.column(c).to_numpy()}), c)
        seconds[c] = time.perf_counter() - t0
        bgm, valid = cbn._bgm_transformer, cbn.valid_component_indicator
        weights, means, stds = bgm.weights_, bgm.means_.ravel(), np.sqrt(bgm.covariances_).ravel()
        order = sorted(np.flatnonzero(valid), key=lambda i: -weights[i])
        rank = {int(i): r for r, i in enumerate(order)}
        modes = tuple(
            Mode("gaussian", i, rank.get(i), bool(valid[i]), float(weights[i]), float(means[i]), float(stds[i]))
            for i in range(len(weights))
        )
        models.append(ColumnModel(c, "continuous", modes, {"backend": "rdt", "n_rows": sample.num_rows}))
        transformers[c] = cbn
    return models, transformers, seconds


def rdt_transform_inverse(transformers: dict, data: pa.Table) -> dict:
    import pandas as pd

    out = {"transform": 0.0, "reverse_transform": 0.0}
    np.random.seed(0)
    for c, cbn in transformers.items():
        frame = pd.DataFrame({c: data.column(c).to_numpy()})
        t0 = time.perf_counter()
        encoded = cbn.transform(frame)
        t1 = time.perf_counter()
        cbn.reverse_transform(encoded)
        t2 = time.perf_counter()
        out["transform"] += t1 - t0
        out["reverse_transform"] += t2 - t1
    return out


def run_ours(spark, engine: str, work: Path, fit_dir: str, bronze: str, seed: int) -> dict:
    """``engine``: spark, local, or mapInArrow (the Spark engine's fallback path)."""
    from pipelines.engine import Engine

    work.mkdir(parents=True, exist_ok=True)
    out, back = str(work / f"out_{engine}"), str(work / f"back_{engine}")
    runner = Engine("spark" if engine == "mapInArrow" else engine, spark if engine != "local" else None,
                    spark_path="mapInArrow" if engine == "mapInArrow" else "auto")
    run = Run(job="bench", output=out)
    stage.transform(runner, run, fit_dir=fit_dir, input_path=bronze, output=out, layout="wide", seed=seed)
    inv = Run(job="bench", output=back)
    stage.inverse(runner, inv, fit_dir=fit_dir, input_path=f"{out}/transformed_values", output=back)
    return {
        "transform": run.timings["transform"],
        "feature_values": run.timings.get("feature_values", 0.0),
        "inverse": inv.timings["inverse"],
        "clip_fraction": {c: f["clip_fraction"] for c, f in run.details["columns"].items()},
        "max_abs_error_unclipped": max(f["max_abs_error_unclipped"] for f in run.details["columns"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--engine", choices=["spark", "local", "mapInArrow", "both", "all"], default="both",
                   help="both: spark and local; all: also the mapInArrow fallback")
    p.add_argument("--fit", choices=["auto", "job", "peer"], default="auto", help="job = jobs/gmm_fit.py; peer = RDT's fit")
    p.add_argument("--fit-sample", type=int, default=50_000, help="rows RDT fits on (peer fit, and RDT's own model)")
    p.add_argument("--rdt-rows", type=int, default=1_000_000, help="rows for RDT's transform + reverse (0: skip)")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--arrow-batch-rows", type=int, default=100_000,
                   help="spark.sql.execution.arrow.maxRecordsPerBatch (Spark's default 10000 costs ~3x here)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", help="default: a temporary folder, deleted afterwards")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gmm_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    fit_job = (ROOT / "jobs" / "gmm_fit.py").exists() and args.fit != "peer"
    have_rdt = importlib.util.find_spec("rdt") is not None
    figures: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM (shared with other jobs during the run)",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "rows": args.rows,
        "columns": list(COLUMNS),
    }
    try:
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            bronze = str(work / "bronze")
            if not delta.table_exists(bronze):
                # In a child process, so the driver's RSS figures are the stages', not the generator's.
                gen = multiprocessing.get_context("spawn").Process(target=write_bronze, args=(bronze, args.rows, args.seed))
                gen.start()
                gen.join()
                if gen.exitcode:
                    raise SystemExit(f"generating {bronze} failed")
            figures["generate_seconds"] = round(time.perf_counter() - t0, 1)
            sample = generate_chunk(0, min(args.fit_sample, args.rows), args.seed)

            transformers = {}
            fit_dir = str(work / "fit")
            spark = None
            if args.engine != "local" or fit_job:
                from pipelines.config import SparkSettings, load_config
                from pipelines.spark import get_spark

                base = load_config(None).spark
                spark = get_spark(SparkSettings(master=base.master, app_name="gmm_bench",
                                                conf={**base.conf, "spark.driver.memory": args.driver_memory,
                                                      "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.arrow_batch_rows)}))
                spark.sparkContext.setLogLevel("ERROR")
            if have_rdt:
                models, transformers, rdt_fit = peer_models(sample)
                figures["rdt_fit_seconds"] = {c: round(s, 1) for c, s in rdt_fit.items()}
            if fit_job:
                spec = importlib.util.spec_from_file_location("gmm_fit_job", ROOT / "jobs" / "gmm_fit.py")
                job = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(job)
                t0 = time.perf_counter()
                code = job.main(["--input", bronze, "--columns", ",".join(COLUMNS), "--fit-dir", fit_dir])
                figures["fit"] = {"source": "jobs/gmm_fit.py", "seconds": round(time.perf_counter() - t0, 1), "exit": code}
            elif have_rdt:
                for m in models:
                    delta.write_polars(m.to_arrow(), f"{fit_dir}/models", mode="append", partition_by=["column"])
                figures["fit"] = {"source": f"RDT ClusterBasedNormalizer on {sample.num_rows} rows (not ours, not timed)"}
            else:
                raise SystemExit("no fit: jobs/gmm_fit.py is not in the tree and rdt is not installed")

            engines = {"both": ["spark", "local"], "all": ["spark", "local", "mapInArrow"]}.get(args.engine, [args.engine])
            warm = str(work / "warmup_bronze")
            write_bronze(warm, WARMUP_ROWS, args.seed + 1)
            for engine in engines:
                # One untimed run on a tiny table first: Spark's first jobs pay for JVM
                # warm-up and Python worker start-up (~10 s each here), not for the data.
                run_ours(spark, engine, work / "warmup", fit_dir, warm, args.seed)
                with PeakRSS() as phase:
                    t0 = time.perf_counter()
                    res = run_ours(spark, engine, work, fit_dir, bronze, args.seed)
                    total = time.perf_counter() - t0
                res["peak_rss_mib"] = phase.mib()
                res["total_seconds"] = round(total, 1)
                res["rows_per_second_transform_inverse"] = round(args.rows / total)
                figures[engine] = res
                print(f"[bench] {engine}: {json.dumps(res)}", file=sys.stderr, flush=True)
                for d in (work / f"out_{engine}", work / f"back_{engine}"):
                    figures.setdefault("disk_bytes", {})[f"{d.name}"] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())

            if transformers and args.rdt_rows:
                n = min(args.rdt_rows, args.rows)
                data = pa.concat_tables(generate_chunk(s, min(CHUNK, n - s), args.seed) for s in range(0, n, CHUNK))
                with PeakRSS() as phase:
                    rdt = rdt_transform_inverse(transformers, data)
                figures["rdt"] = {"rows": n, **{k: round(v, 2) for k, v in rdt.items()},
                                  "rows_per_second_transform_inverse": round(n / (rdt["transform"] + rdt["reverse_transform"])),
                                  "peak_rss_mib": phase.mib()}
        figures["peak_rss_mib_whole_run"] = rss.mib()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
