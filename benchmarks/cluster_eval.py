"""Benchmark: the whole cluster_eval sweep (k = 2..10) against scikit-learn and Spark MLlib.

    python -m benchmarks.cluster_eval --rows 10000000 --sklearn-rows 10000000 --mllib 10000000:2,6 --make-run
    python -m benchmarks.cluster_eval --quality-rows 0 1000000

For each size, 8-feature Gaussian blobs (true k = 6) are generated in Spark
(pipelines.cluster.data.make_blobs, seed 7) and written to Parquet once. Then, in separate
processes on that same file, with ``uptime`` recorded beside each figure:

- ``job``: ``spark-submit jobs/cluster_eval.py --input ... --format parquet`` with the
  defaults (algorithm kmeans, k = 2..10, exact silhouette sample, tables and report) and
  spark-submit's default driver memory; wall time, the job's own phase timings, and the
  peak RSS of its Python driver and its JVM;
- ``sklearn``: load + KMeans(n_init=1, max_iter=20) + calinski_harabasz_score +
  davies_bouldin_score per k (all rows in memory), wall time and peak RSS;
- ``mllib``: the same job with ``--algorithm spark-kmeans`` on a subset of k (it caches the
  input, so it gets ``--driver-memory 8g``).

``--make-run`` times ``make run``'s command (the built-in dataset) against a spark-submit
that only starts a session and counts 10 rows. ``--quality-rows`` (0 = the built-in
dataset) compares the job's inertia per k with MLlib KMeans (seed 42) and scikit-learn
KMeans(n_init=3), and the job's CH/DB with scikit-learn's on the job's own labels.

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

TRUE_K = 6
DIMS = 8
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SPARK_SUBMIT = str(Path(PY).with_name("spark-submit"))


def children_cpu() -> float:
    """CPU seconds of every finished descendant so far (JVM, Python driver and workers).

    Beside wall time: on a shared machine a process's CPU seconds move far less with the
    load than its wall time does.
    """
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def emit(rec: dict) -> dict:
    rec["uptime"] = uptime()
    print(json.dumps(rec), flush=True)
    return rec


def generate(rows: int, path: Path) -> None:
    if (path / "_SUCCESS").exists():  # a run killed mid-write leaves no _SUCCESS: write again
        return
    code = (
        "import sys; from pipelines.spark import get_spark; from pipelines.config import load_config;"
        "from pipelines.cluster.data import make_blobs;"
        "s = get_spark(load_config(None).spark);"
        f"make_blobs(s, rows={rows}, k={TRUE_K}, dims={DIMS}, seed=7, partitions={max(2, rows // 1_000_000)})"
        f".write.mode('overwrite').parquet({str(path)!r})"
    )
    subprocess.run([PY, "-c", code], check=True, cwd=ROOT)


class TreeRSS:
    """Peak RSS of a process tree, split into the job's Python driver and the JVMs."""

    def __init__(self, proc: subprocess.Popen, script: str) -> None:
        self.root, self.script = psutil.Process(proc.pid), script
        self.driver = self.jvm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for p in [self.root, *self.root.children(recursive=True)]:
                    try:
                        rss, cmd = p.memory_info().rss, " ".join(p.cmdline())
                    except psutil.Error:
                        continue
                    if "java" in p.name():
                        self.jvm = max(self.jvm, rss)
                    elif self.script in cmd and "python" in p.name():
                        self.driver = max(self.driver, rss)
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def spark_submit(args: list[str], *, script: str = "jobs/cluster_eval.py", driver_memory: str | None = None) -> dict:
    """Run ``spark-submit [--driver-memory M] script args``; wall seconds, peak RSS, last JSON line."""
    cmd = [SPARK_SUBMIT, *(["--driver-memory", driver_memory] if driver_memory else []), script, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": PY, "PYSPARK_DRIVER_PYTHON": PY}
    log = Path(tempfile.mkstemp(prefix="cluster_eval_bench_", suffix=".log")[1])
    print(f"# {' '.join(cmd[1:])}  (progress: {log})", flush=True)
    t0, c0 = time.perf_counter(), children_cpu()
    with log.open("w") as err_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_file, text=True)
        rss = TreeRSS(proc, script)
        out, _ = proc.communicate()
    rss.stop()
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    err = log.read_text()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    record = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0:
        record["error"] = f"exit {proc.returncode}: {err.strip().splitlines()[-3:]}"
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "driver_python_rss_mb": rss.driver // 2**20, "jvm_rss_mb": rss.jvm // 2**20,
            "run": record}


def job(path: Path, out: Path, extra: list[str] = (), driver_memory: str | None = None) -> dict:
    res = spark_submit(["--input", str(path), "--format", "parquet", "--output", str(out), *extra],
                       driver_memory=driver_memory)
    run = res.pop("run")
    res["timings"] = run.get("timings")
    res["recommended_k"] = run.get("recommended_k")
    if "error" in run or run.get("status") != "succeeded":
        res["error"] = run.get("error")
    return res


_SKLEARN = """
import json, resource, sys, time
import numpy as np, pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
path, ks = sys.argv[1], [int(k) for k in sys.argv[2].split(",")]
t_all = time.perf_counter()
x = np.column_stack([c.to_numpy() for c in pq.read_table(path, columns=[f"x{j}" for j in range(8)]).columns])
load = time.perf_counter() - t_all
per_k = []
for k in ks:
    t0 = time.perf_counter(); labels = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=42).fit_predict(x)
    fit = time.perf_counter() - t0
    t0 = time.perf_counter(); ch = calinski_harabasz_score(x, labels); db = davies_bouldin_score(x, labels)
    per_k.append({"k": k, "fit_s": round(fit, 2), "ch_db_s": round(time.perf_counter() - t0, 2)})
print(json.dumps({"rows": len(x), "load_s": round(load, 2), "total_s": round(time.perf_counter() - t_all, 2),
                  "per_k": per_k, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""


def sklearn_sweep(path: Path, ks: list[int], timeout: float) -> dict:
    t0, c0 = time.perf_counter(), children_cpu()
    try:
        proc = subprocess.run([PY, "-c", _SKLEARN, str(path), ",".join(map(str, ks))],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["wall_s"], rec["cpu_s"] = round(time.perf_counter() - t0, 2), round(children_cpu() - c0, 1)
    return rec


_TRIVIAL = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print(spark.range(10).count())
spark.stop()
"""


def make_run(out: Path) -> list[dict]:
    """``make run``'s command against a session-only spark-submit, in the same run (same flags)."""
    trivial = Path(tempfile.mkdtemp()) / "trivial.py"
    trivial.write_text(_TRIVIAL)
    recs = []
    for _ in range(2):  # alternate, so a load spike does not hit only one side
        t = spark_submit([], script=str(trivial), driver_memory="4g")
        recs.append(emit({"bench": "make_run", "what": "trivial spark-submit", "wall_s": t["wall_s"], "cpu_s": t["cpu_s"]}))
        r = spark_submit(["--output", str(out)], driver_memory="4g")
        recs.append(emit({"bench": "make_run", "what": "make run (cluster_eval, built-in dataset)",
                          "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "timings": r["run"].get("timings"),
                          "recommended_k": r["run"].get("recommended_k"), "ratio": round(r["wall_s"] / t["wall_s"], 2)}))
    return recs


_QUALITY = """
import json, sys
import numpy as np, pyarrow.parquet as pq
from deltalake import DeltaTable
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
data, ours, mllib = sys.argv[1], sys.argv[2], sys.argv[3]
t = pq.read_table(data)
cols = [c for c in t.column_names if c.startswith("x")]
ids = t.column("_row_id").to_numpy()
x = np.column_stack([t.column(c).to_numpy() for c in cols])
x = (x - x.mean(axis=0)) / x.std(axis=0)  # the job's standard scaling
order = np.argsort(ids)
m_ours = {r["k"]: r for r in DeltaTable(ours + "/metrics").to_pyarrow_table().to_pylist()}
m_ml = {r["k"]: r for r in DeltaTable(mllib + "/metrics").to_pyarrow_table().to_pylist()}
a = DeltaTable(ours + "/assignments").to_pyarrow_table()
out = []
for k in sorted(m_ours):
    sel = a.filter(__import__("pyarrow").compute.equal(a.column("k"), k))
    lab_ids, lab = sel.column("_row_id").to_numpy(), sel.column("cluster").to_numpy()
    lab_full = np.full(len(ids), -1, dtype=np.int64)
    lab_full[order[np.searchsorted(ids[order], lab_ids)]] = lab
    assert (lab_full >= 0).all()
    sk = KMeans(n_clusters=k, n_init=3, random_state=42).fit(x).inertia_
    mine = m_ours[k]["inertia"]
    ref = min(sk, m_ml[k]["inertia"]) if k in m_ml else sk
    out.append({"k": k, "inertia": mine, "sklearn_n_init3": sk, "mllib_seed42": m_ml.get(k, {}).get("inertia"),
                "ratio_to_best": mine / ref,
                "ch_rel_err": abs(m_ours[k]["calinski_harabasz"] / calinski_harabasz_score(x, lab_full) - 1),
                "db_rel_err": abs(m_ours[k]["davies_bouldin"] / davies_bouldin_score(x, lab_full) - 1)})
print(json.dumps(out))
"""


def quality(rows: int, data: Path, out: Path) -> dict:
    """Our inertia per k vs MLlib (seed 42) and scikit-learn KMeans(n_init=3); CH/DB vs sklearn on our labels."""
    if rows == 0:
        path = data / "default_dataset"
        if not (path / "_SUCCESS").exists():
            code = ("from pipelines.spark import get_spark; from pipelines.config import load_config;"
                    "from pipelines.cluster.data import make_blobs;"
                    f"make_blobs(get_spark(load_config(None).spark)).write.mode('overwrite').parquet({str(path)!r})")
            subprocess.run([PY, "-c", code], check=True, cwd=ROOT)
    else:
        path = data / f"blobs_{rows}"
        generate(rows, path)
    ours = job(path, out / f"q{rows}_ours", ["--keep-assignments", "--features", ",".join(_features(rows))])
    mllib = job(path, out / f"q{rows}_mllib", ["--algorithm", "spark-kmeans", "--silhouette-sample", "0",
                                               "--features", ",".join(_features(rows))], driver_memory="8g")
    proc = subprocess.run([PY, "-c", _QUALITY, str(path), str(out / f"q{rows}_ours"), str(out / f"q{rows}_mllib")],
                          capture_output=True, text=True)
    per_k = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-500:]
    return emit({"bench": "quality", "rows": rows or "built-in dataset", "recommended_k": ours.get("recommended_k"),
                 "mllib_recommended_k": mllib.get("recommended_k"), "job_wall_s": ours["wall_s"],
                 "mllib_wall_s": mllib["wall_s"], "per_k": per_k})


def _features(rows: int) -> list[str]:
    return [f"x{j}" for j in range(5 if rows == 0 else DIMS)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[])
    ap.add_argument("--sklearn-rows", type=int, nargs="*", default=[])
    ap.add_argument("--mllib", action="append", default=[], metavar="ROWS:K,K,...",
                    help="also run the job with --algorithm spark-kmeans on these ks at that size")
    ap.add_argument("--make-run", action="store_true")
    ap.add_argument("--quality-rows", type=int, nargs="*", default=[], help="0 = the built-in dataset")
    ap.add_argument("--sklearn-timeout", type=float, default=3600)
    ap.add_argument("--data", default="benchmarks/data/cluster_eval")
    ap.add_argument("--out", default="benchmarks/data/cluster_eval_out")
    args = ap.parse_args()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    data.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: {' '.join(sys.argv)}", flush=True)
    ks = list(range(2, 11))
    mllib = {int(r): ks_text for r, ks_text in (i.split(":", 1) for i in args.mllib)}
    if args.make_run:
        make_run(out / "make_run")
    for rows in args.rows:
        path = data / f"blobs_{rows}"
        generate(rows, path)
        emit({"bench": "sweep", "engine": "job (kmeans, defaults, default driver memory)", "rows": rows,
              **job(path, out / f"job_{rows}")})
        if rows in args.sklearn_rows:
            emit({"bench": "sweep", "engine": "sklearn", "rows": rows, **sklearn_sweep(path, ks, args.sklearn_timeout)})
        if rows in mllib:
            emit({"bench": "sweep", "engine": f"job --algorithm spark-kmeans --k {mllib[rows]}", "rows": rows,
                  **job(path, out / f"mllib_{rows}", ["--algorithm", "spark-kmeans", "--k", mllib[rows],
                                                      "--silhouette-sample", "0"], driver_memory="8g")})
    for rows in args.quality_rows:
        quality(rows, data, out)


if __name__ == "__main__":
    main()
