"""Fit per-column GMM normalisers (continuous, categorical and mixed columns) into <fit-dir>.

    spark-submit jobs/gmm_fit.py --input TABLE --columns a,b [--categorical c] [--mixed 'd=0,-1;e=0']
        --fit-dir DIR [--max-components 10] [--weight-threshold 0.005] [--prune-tolerance 0.001]
        [--selection bic|none] [--coverage-tolerance 1e-5] [--coverage-min-rows 5]
        [--mode mle|bayesian] [--backend summary|spark-ml] [--seed N]
        [--only a,b | --only-drifted DRIFT_DIR] [--refine-iterations N] [--driver-rows 100000] [--config FILE]

Writes <fit-dir>/models and <fit-dir>/fit_status (Delta, partitioned by column). A re-run
fits only columns that have not succeeded; --only refits the named ones. Exit code 1 when
a column failed (the others are still written), 2 on bad input. --only-drifted refits exactly
the columns the last drift run in DRIFT_DIR marked drifted (none: nothing to do). fit_status
records the input table version each column was fitted on and why it was (re)fitted.
"""

from __future__ import annotations

from pipelines.gmm import fit
from pipelines.gmm.fit import parse_mixed
from pipelines.runs import JobArgumentParser, add_config_flag, csv_list, execute


def build_parser() -> JobArgumentParser:
    p = JobArgumentParser(prog="gmm_fit", description=__doc__.splitlines()[0])
    p.add_argument("--input", metavar="TABLE", help="Delta table to fit (e.g. the ingest bronze table)")
    p.add_argument("--columns", type=csv_list, help="columns to fit (default: every numeric column not starting with _)")
    p.add_argument("--categorical", type=csv_list, help="categorical columns (ranked by frequency; null is a category)")
    p.add_argument("--mixed", type=parse_mixed, metavar="'COL=V1,V2;COL2=V3'", help="mixed columns and their special values")
    p.add_argument("--fit-dir", dest="fit_dir", metavar="DIR", help="where models and fit_status are written")
    p.add_argument("--max-components", dest="max_components", type=int)
    p.add_argument("--weight-threshold", dest="weight_threshold", type=float)
    p.add_argument("--prune-tolerance", dest="prune_tolerance", type=float,
                   help="nats/row a Gaussian under the weight threshold may cost and still be dropped")
    p.add_argument("--selection", choices=["bic", "none"], help="BIC model selection on the summary (default bic)")
    p.add_argument("--coverage-tolerance", dest="coverage_tolerance", type=float,
                   help="share of finite rows that may stay outside every kept Gaussian before one is added (1: never)")
    p.add_argument("--coverage-min-rows", dest="coverage_min_rows", type=int,
                   help="fewest rows an added Gaussian may cover")
    p.add_argument("--mode", choices=["mle", "bayesian"])
    p.add_argument("--backend", choices=["summary", "spark-ml"])
    p.add_argument("--seed", type=int)
    p.add_argument("--only", type=csv_list, help="refit these columns even if they succeeded")
    p.add_argument("--only-drifted", dest="only_drifted", metavar="DRIFT_DIR",
                   help="refit exactly the columns the last drift run in DRIFT_DIR marked drifted")
    p.add_argument("--bins", type=int, help="most summary points per column")
    p.add_argument("--max-iter", dest="max_iter", type=int)
    p.add_argument("--n-init", dest="n_init", type=int)
    p.add_argument("--refine-iterations", dest="refine_iterations", type=int, help="full-data EM passes after the summary fit")
    p.add_argument("--driver-rows", dest="driver_rows", type=int,
                   help="an input of at most this many rows is summarised on the driver (0: always a Spark pass)")
    add_config_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return execute("gmm_fit", build_parser(), argv, fit.run, output_key="fit_dir")


if __name__ == "__main__":
    raise SystemExit(main())
