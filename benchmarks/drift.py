"""The drift job against one plain Spark read of both table versions.

    python benchmarks/drift.py --rows 50000000 [--columns 4] [--work DIR] [--master local[2]] [--driver-memory 4g]

Writes one Delta table twice (version 0, then version 1 with one column shifted), each
``rows x columns`` doubles of mixed shapes (normal, log-normal, rounded = heavy ties,
integers), then in the same run times:

- ``read``: one plain Spark read of both versions (every column, ``noop`` sink);
- ``drift``: the drift job (``--current T --baseline T@0``), its profile pass and KS refinement passes.

Prints the machine load (``uptime``) before and after, the figures, the ratio and the KS
pass's share, and a Markdown row for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import redirect_stdout  # noqa: E402
from io import StringIO  # noqa: E402
from pathlib import Path  # noqa: E402


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--work", default="/tmp/bench_drift")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    args = parser.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import functions as F

    from jobs.drift import main as drift_main
    from pipelines import delta
    from pipelines.config import load_config
    from pipelines.spark import get_spark

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    base = load_config(None).spark
    spark = get_spark(base.model_copy(update={"master": args.master,
                                              "conf": {**base.conf, "spark.driver.memory": args.driver_memory}}))
    spark.sparkContext.setLogLevel("ERROR")
    names = [f"c{i}" for i in range(args.columns)]
    shapes = [
        lambda i, s: F.randn(seed=i + s) * 3 + 1,
        lambda i, s: F.exp(F.randn(seed=i + s)),
        lambda i, s: F.round(F.randn(seed=i + s), 1),
        lambda i, s: F.floor(F.rand(seed=i + s) * 100),
    ]
    table = str(work / "bronze")
    t0 = time.perf_counter()
    for version, seed in ((0, 0), (1, 1000)):
        cols = [F.col("id").alias("_row_id")]
        for i, n in enumerate(names):
            x = shapes[i % 4](i, seed)
            cols.append((x + 0.5 if version == 1 and i == 0 else x).alias(n))  # version 1: c0 moved
        delta.write_table(spark.range(args.rows).select(*cols), table, mode="overwrite")
    t_gen = time.perf_counter() - t0
    files = len(delta._open(table).file_uris())
    print(f"generated 2 versions x {args.rows:,} rows x {args.columns} columns ({files} files each) in {t_gen:.0f}s",
          file=sys.stderr)

    load_before = _uptime()
    # warm-up (JIT, Python workers), not measured
    delta.read_table(spark, table, version=0).limit(100_000).write.format("noop").mode("overwrite").save()

    def read_both() -> None:
        for v in (0, 1):
            delta.read_table(spark, table, version=v).write.format("noop").mode("overwrite").save()

    t0 = time.perf_counter()
    read_both()
    t_read = time.perf_counter() - t0
    print(f"plain read of both versions: {t_read:.1f}s ({load_before})", file=sys.stderr)

    out = StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(out):
        code = drift_main(["--current", table, "--baseline", f"{table}@0", "--columns", ",".join(names),
                           "--output", str(work / "drift")])
    t_drift = time.perf_counter() - t0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"drift exited {code}: {summary['error']}")
    load_after = _uptime()
    timings = summary["timings"]
    figures = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, master {args.master}",
        "rows_per_version": args.rows, "columns": args.columns, "files_per_version": files,
        "read_both_s": round(t_read, 1), "drift_s": round(t_drift, 1),
        "profile_s": timings.get("profile"), "ks_refine_s": timings.get("ks_refine"),
        "ratio": round(t_drift / t_read, 2), "ks_share": round(timings.get("ks_refine", 0) / t_drift, 2),
        "ks_passes": summary.get("ks_passes"),
        "drifted": summary["drifted"], "load_before": load_before, "load_after": load_after,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    print(json.dumps(figures, indent=2))
    print(f"| {args.rows:,} x {args.columns} x 2 | {t_read:.1f} s | {t_drift:.1f} s | {t_drift / t_read:.2f}x | "
          f"{timings.get('profile')} s | {timings.get('ks_refine')} s ({figures['ks_share']:.0%}) | "
          f"{load_before.split('load average:')[-1].strip()} -> {load_after.split('load average:')[-1].strip()} |")


if __name__ == "__main__":
    main()
