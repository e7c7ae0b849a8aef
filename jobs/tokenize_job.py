"""Tokenise numeric columns into integer tokens, or map tokens back to values.

    spark-submit jobs/tokenize_job.py --input TABLE --columns a,b --output OUT \
        [--bins 256] [--method quantile|uniform] [--relative-error 1e-4] [--engine spark|local]
    spark-submit jobs/tokenize_job.py --detokenize --tokenizer OUT/tokenizer --input OUT/tokens \
        --output BACK [--value mean|centre] [--engine spark|local]

Writes OUT/tokenizer and OUT/tokens (or BACK/detokenized) as Delta tables and
OUT/_runs/<run_id>.json; the last stdout line is that summary. Config section: ``tokenize``.
(Not ``jobs/tokenize.py``: run as a script, that name would shadow the standard library's
``tokenize`` module for every job in this folder.)
"""

from __future__ import annotations

from pipelines import tokenize
from pipelines.runs import JobArgumentParser, add_config_flag, add_engine_flag, csv_list, execute


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
    add_engine_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return execute("tokenize", build_parser(), argv, tokenize.run, needs_spark=tokenize.needs_spark)


if __name__ == "__main__":
    raise SystemExit(main())
