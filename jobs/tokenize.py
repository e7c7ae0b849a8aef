"""Tokenise numeric columns into integer tokens, or map tokens back to values.

    spark-submit jobs/tokenize.py --input TABLE --columns a,b --output OUT \
        [--bins 256] [--method quantile|uniform] [--relative-error 1e-4] [--engine spark|polars]
    spark-submit jobs/tokenize.py --detokenize --tokenizer OUT/tokenizer --input OUT/tokens \
        --output BACK [--value mean|centre] [--engine spark|polars]

Writes OUT/tokenizer and OUT/tokens (or BACK/detokenized) as Delta tables and
OUT/_runs/<run_id>.json; the last stdout line is that summary. Config section: ``tokenize``.
"""

from __future__ import annotations

import os
import sys

# Run as a script (spark-submit, a Databricks spark_python_task), a job's folder is first
# on sys.path, so this file shadows the standard library's ``tokenize`` (imported by
# linecache/traceback) for every job in it. Drop the folder, and when a sibling job's
# ``import tokenize`` got this file, hand that import the real module instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

if __name__ == "tokenize":
    import importlib

    del sys.modules["tokenize"]
    sys.modules["tokenize"] = importlib.import_module("tokenize")
else:
    from pipelines.runs import JobArgumentParser, add_config_flag, csv_list, execute
    from pipelines.tokenize import run as stage_run

def build_parser() -> JobArgumentParser:
    p = JobArgumentParser(prog="tokenize", description=__doc__.split("\n\n")[0])
    add_config_flag(p)
    p.add_argument("--input", metavar="TABLE", help="Delta table with _row_id (tokens table with --detokenize)")
    p.add_argument("--columns", type=csv_list, metavar="A,B", help="numeric columns (default: every numeric column; with --detokenize: all the tokenizer's)")
    p.add_argument("--output", metavar="DIR", help="output root")
    p.add_argument("--bins", type=int, help="bins per column (default 256)")
    p.add_argument("--method", choices=["quantile", "uniform"], help="quantile edges or Chronos mean-scaled uniform bins")
    p.add_argument("--relative-error", type=float, help="rank error of the approximate quantiles (default 1e-4)")
    p.add_argument("--detokenize", action="store_true", default=None, help="map tokens back to values")
    p.add_argument("--tokenizer", metavar="TABLE", help="OUT/tokenizer of a tokenize run (with --detokenize)")
    p.add_argument("--value", choices=["mean", "centre"], help="detokenised value of a bin (default mean)")
    p.add_argument("--engine", choices=["spark", "polars"], help="who runs the per-partition kernels (default spark)")
    return p


def main(argv: list[str] | None = None) -> int:
    return execute("tokenize", build_parser(), argv, stage_run)


if __name__ == "__main__":
    raise SystemExit(main())
