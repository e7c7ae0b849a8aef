"""Benchmark: every job on small data, each against a trivial ``spark-submit`` in the same run.

    python -m benchmarks.small_data [--out benchmarks/data/small] [--datasets demo,diabetes] [--jobs ingest,pipeline]
        [--baseline-tree DIR]

Two small, real inputs:

- ``demo``: the pipeline's built-in demo CSV (:func:`pipelines.datasets.write_default_source`,
  20,000 rows, 7 columns);
- ``diabetes``: scikit-learn's diabetes data as a messy export (442 rows, 11 columns, headers
  with spaces, parentheses and unicode, ``NA`` / ``N/A`` / ``null`` cells;
  :func:`pipelines.datasets.write_diabetes_export`).

For each it times, as separate ``spark-submit`` processes (a new user's runs): ingest,
cluster_eval, gmm_fit, gmm_transform, gmm_transform --inverse, tokenize, tokenize
--detokenize, and jobs/pipeline.py; and a trivial submit that only starts a session
(:func:`pipelines.spark.get_spark`), at the start and the end of the run. It prints one line
per run (wall seconds, ratio to the trivial submit, the machine load, the job's own
``seconds`` and its slowest timed steps) and a Markdown table for ``benchmarks/RESULTS.md``.

``--baseline-tree DIR`` also runs ingest from another checkout (e.g. ``/work/main``), in the
same run, so a change can be compared on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = str(Path(sys.executable).with_name("spark-submit"))

DEMO_GMM = ["--columns", "amount,score,segment", "--categorical", "segment", "--mixed", "amount=0"]
DEMO_TOKENIZE = ["--columns", "amount,score,age"]
DIABETES_GMM = ["--columns", "bmi_kg_m2,blood_pressure_mm_hg,sex", "--categorical", "sex"]
DIABETES_TOKENIZE = ["--columns", "bmi_kg_m2,blood_pressure_mm_hg,ldl"]


def session_only() -> None:
    """The trivial submit: start (or reuse) the session the jobs would get, run nothing."""
    sys.path.insert(0, str(ROOT))
    from pipelines.spark import get_spark

    get_spark()


def load() -> float:
    return os.getloadavg()[0]


def submit(script: str, args: list[str], *, tree: Path = ROOT) -> dict:
    """One ``spark-submit`` run: wall seconds, exit code, load before, and the job's summary line."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    before = load()
    t0 = time.monotonic()
    proc = subprocess.run([SPARK_SUBMIT, str(tree / script), *args], env=env, cwd=tree, capture_output=True, text=True)
    wall = time.monotonic() - t0
    summary = None
    lines = proc.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        summary = json.loads(lines[-1])
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return {"wall": wall, "code": proc.returncode, "load": before, "summary": summary}


def _steps(summary: dict | None) -> str:
    if not summary:
        return ""
    timings = sorted(summary.get("timings", {}).items(), key=lambda kv: -kv[1])[:3]
    return f"job {summary['seconds']:.1f}s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings)


def jobs_for(name: str, source: str, out: Path) -> list[tuple[str, str, list[str]]]:
    bronze, fit = str(out / "ingest" / "bronze"), str(out / "gmm_fit")
    gmm, tok = (DEMO_GMM, DEMO_TOKENIZE) if name == "demo" else (DIABETES_GMM, DIABETES_TOKENIZE)
    return [
        ("ingest", "jobs/ingest.py", ["--source", source, "--format", "csv", "--output", str(out / "ingest")]),
        ("cluster_eval", "jobs/cluster_eval.py", ["--input", bronze, "--output", str(out / "cluster_eval")]),
        ("gmm_fit", "jobs/gmm_fit.py", ["--input", bronze, "--fit-dir", fit, *gmm]),
        ("gmm_transform", "jobs/gmm_transform.py",
         ["--fit-dir", fit, "--input", bronze, "--output", str(out / "gmm_transform")]),
        ("gmm_transform --inverse", "jobs/gmm_transform.py",
         ["--inverse", "--fit-dir", fit, "--input", str(out / "gmm_transform" / "transformed_values"),
          "--output", str(out / "gmm_back")]),
        ("tokenize", "jobs/tokenize_job.py", ["--input", bronze, *tok, "--output", str(out / "tokenize")]),
        ("tokenize --detokenize", "jobs/tokenize_job.py",
         ["--detokenize", "--tokenizer", str(out / "tokenize" / "tokenizer"), "--input",
          str(out / "tokenize" / "tokens"), "--output", str(out / "tokenize_back")]),
        ("pipeline", "jobs/pipeline.py",
         ["--output", str(out / "pipeline")] if name == "demo"
         else ["--source", source, "--format", "csv", "--output", str(out / "pipeline")]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "small"))
    p.add_argument("--datasets", default="demo,diabetes")
    p.add_argument("--jobs", help="comma-separated job labels to run (default: all; ingest is always run first)")
    p.add_argument("--baseline-tree", type=Path, help="another checkout whose ingest runs beside this one")
    p.add_argument("--session-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.session_only:
        session_only()
        return 0

    sys.path.insert(0, str(ROOT))
    from pipelines import datasets

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = {
        "demo": datasets.write_default_source(str(out / "demo.csv")),
        "diabetes": datasets.write_diabetes_export(str(out / "diabetes.csv")),
    }
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    trivial = ("trivial submit", "benchmarks/small_data.py", ["--session-only"])
    rows: list[tuple[str, str, dict]] = []

    def record(dataset: str, label: str, result: dict) -> None:
        rows.append((dataset, label, result))
        ref = [r["wall"] for d, lab, r in rows if lab == "trivial submit"]
        ratio = result["wall"] / (sum(ref) / len(ref))
        status = "ok" if result["code"] == 0 else f"exit {result['code']}"
        print(f"{dataset:9s} {label:26s} {result['wall']:6.1f}s  x{ratio:4.2f}  load {result['load']:5.1f}  "
              f"{status}  {_steps(result['summary'])}", flush=True)

    record("-", trivial[0], submit(trivial[1], trivial[2]))
    for name in [d.strip() for d in args.datasets.split(",")]:
        root = out / name
        wanted = None if args.jobs is None else {"ingest", *(j.strip() for j in args.jobs.split(","))}
        for label, script, job_args in jobs_for(name, sources[name], root):
            if wanted is None or label in wanted:
                record(name, label, submit(script, job_args))
        if args.baseline_tree:
            base = jobs_for(name, sources[name], out / f"{name}_baseline")[0]
            record(name, f"ingest ({args.baseline_tree})", submit(base[1], base[2], tree=args.baseline_tree))
    record("-", trivial[0], submit(trivial[1], trivial[2]))

    ref = [r["wall"] for _, lab, r in rows if lab == "trivial submit"]
    base = sum(ref) / len(ref)
    print(f"\nuptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("\n| data | job | wall s | x trivial submit | load (1 min) | job's own s | slowest steps |")
    print("|---|---|---:|---:|---:|---:|---|")
    for dataset, label, r in rows:
        s = r["summary"]
        steps = _steps(s).split(": ", 1)[-1] if s else ("exit " + str(r["code"]) if r["code"] else "")
        own = f"{s['seconds']:.1f}" if s else ""
        print(f"| {dataset} | {label} | {r['wall']:.1f} | {r['wall'] / base:.2f} | {r['load']:.1f} | {own} | {steps} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
