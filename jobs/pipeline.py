"""The full chain in one command: ingest -> cluster_eval -> gmm_fit -> gmm_transform -> tokenize.

    spark-submit jobs/pipeline.py [--source PATH_OR_GLOB --format csv|parquet|json|delta] [--output DIR] [--config FILE]

Without --source it runs on the built-in demo dataset. Each stage writes under
DIR/<stage>/ with its own run summary; DIR/_runs/<run_id>.json lists them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.pipeline import run_pipeline
from pipelines.runs import JobArgumentParser, add_config_flag, add_engine_flag, execute


def build_parser() -> JobArgumentParser:
    p = JobArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--source", help="raw files (path or glob); default: the built-in demo dataset")
    p.add_argument("--format", choices=["csv", "parquet", "json", "delta"], help="format of --source")
    p.add_argument("--output", metavar="DIR", help="root folder for every stage's outputs (default output/pipeline)")
    add_engine_flag(p)
    add_config_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return execute("pipeline", build_parser(), argv, run_pipeline, section="*")


if __name__ == "__main__":
    raise SystemExit(main())
