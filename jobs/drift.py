"""Drift of every column between two table versions: PSI, exact KS, chi-square, rates, moments, GMM fit.

    spark-submit jobs/drift.py --current TABLE[@VERSION] (--baseline TABLE[@VERSION] | --baseline-fit FIT_DIR)
        [--columns a,b] [--categorical c] [--bins 10] [--psi-threshold 0.2] [--loglik-threshold 0.25]
        [--fit-dir DIR] [--output DIR] [--config FILE]

Writes OUT/drift (Delta, one row per column and run), OUT/summary.json, OUT/report.md and
OUT/report.html. Exit code 0 whether or not a column drifted; 2 on bad input (a missing
table, version or column). ``gmm_fit --only-drifted OUT`` then refits the drifted columns.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.drift import run
from pipelines.runs import JobArgumentParser, add_config_flag, csv_list, execute


def build_parser() -> JobArgumentParser:
    p = JobArgumentParser(prog="drift", description=__doc__.splitlines()[0])
    p.add_argument("--current", metavar="TABLE[@VERSION]", help="the table version to check (default: latest)")
    p.add_argument("--baseline", metavar="TABLE[@VERSION]", help="the reference: a version of the same or another table")
    p.add_argument("--baseline-fit", dest="baseline_fit", metavar="FIT_DIR",
                   help="the reference: the table version each column's GMM in FIT_DIR was fitted on")
    p.add_argument("--fit-dir", dest="fit_dir", metavar="DIR", help="GMMs for the log-likelihood drift (with --baseline)")
    p.add_argument("--columns", type=csv_list, help="columns to compare (default: every column not starting with _)")
    p.add_argument("--categorical", type=csv_list, help="numeric columns to compare as categories")
    p.add_argument("--bins", type=int, help="PSI bins (baseline quantiles), default 10")
    p.add_argument("--psi-threshold", dest="psi_threshold", type=float)
    p.add_argument("--loglik-threshold", dest="loglik_threshold", type=float, help="nats per row")
    p.add_argument("--output", metavar="DIR", help="output folder (default output/drift)")
    add_config_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return execute("drift", build_parser(), argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
