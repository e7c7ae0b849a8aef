"""cluster_eval: how many clusters are in the data? The project's main job.

    spark-submit jobs/cluster_eval.py [--input PATH] [--format delta|parquet|csv] [--features a,b,...]
        [--k-min 2 --k-max 10 | --k 2,3,5,8] [--scale standard|none] [--algorithm kmeans|spark-kmeans|bisecting]
        [--max-iter 20] [--tol 1e-4] [--summary-rows 50000] [--n-init 20] [--seed 42] [--silhouette-sample 5000]
        [--gmm] [--gap B [--gap-sample N]]
        [--keep-assignments] [--impute drop|mean] [--output DIR] [--config FILE]

With no arguments it evaluates k = 2..10 on a built-in dataset of Gaussian blobs with
4 clusters and writes to output/cluster_eval.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.cluster import run as cluster_eval
from pipelines.runs import JobArgumentParser, add_config_flag, csv_list, execute, int_list


def build_parser() -> JobArgumentParser:
    p = JobArgumentParser(prog="cluster_eval", description=__doc__.splitlines()[0])
    p.add_argument("--input", help="Delta, Parquet or CSV path (default: the built-in blobs dataset)")
    p.add_argument("--format", choices=["delta", "parquet", "csv"], help="input format (default: inferred)")
    p.add_argument("--features", type=csv_list, help="feature columns (default: numeric columns not starting with _)")
    p.add_argument("--k-min", type=int, dest="k_min")
    p.add_argument("--k-max", type=int, dest="k_max")
    p.add_argument("--k", type=int_list, help="explicit ks, e.g. 2,3,5,8 (instead of --k-min/--k-max)")
    p.add_argument("--scale", choices=["standard", "none"])
    p.add_argument("--algorithm", choices=["kmeans", "spark-kmeans", "bisecting"],
                   help="kmeans: summary + batched full-data passes (default); spark-kmeans, bisecting: MLlib per k")
    p.add_argument("--tol", type=float, help="kmeans: stop a k when a pass lowers its inertia by at most this")
    p.add_argument("--summary-rows", type=int, dest="summary_rows", help="kmeans: rows of the driver-side sample")
    p.add_argument("--n-init", type=int, dest="n_init", help="kmeans: k-means++ restarts per k")
    p.add_argument("--max-iter", type=int, dest="max_iter")
    p.add_argument("--seed", type=int)
    p.add_argument("--silhouette-sample", type=int, dest="silhouette_sample", help="rows for the exact silhouette (0 = off)")
    p.add_argument("--gmm", action="store_true", default=None, help="also fit a GaussianMixture per k (BIC/AIC)")
    p.add_argument("--gap", type=int, metavar="B", help="gap statistic with B reference sets (0 = off)")
    p.add_argument("--gap-sample", type=int, dest="gap_sample", metavar="N", help="rows for the gap statistic")
    p.add_argument("--keep-assignments", action="store_true", default=None, dest="keep_assignments")
    p.add_argument("--impute", choices=["drop", "mean"], help="rows with null/NaN/inf features: drop or impute means")
    p.add_argument("--output", help="output folder (default: output/cluster_eval)")
    add_config_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return execute("cluster_eval", build_parser(), argv, cluster_eval.run)


if __name__ == "__main__":
    raise SystemExit(main())
