"""Ingest raw files into a bronze Delta table, with a quarantine table for every row it cannot take.

    spark-submit jobs/ingest.py --source PATH_OR_GLOB --format csv|parquet|json|delta --output DIR \
        [--schema FILE] [--name NAME] [--mode overwrite|append] [--force] [--null-values 'NA,N/A,'] \
        [--dry-run] [--config FILE]

Writes DIR/bronze, DIR/quarantine, DIR/_ingested_files and DIR/_runs/<run_id>.json; the
last stdout line is the run summary. Bad input: one line on stderr, exit code 2.
--dry-run reads only the type-inference sample, prints the schema, the source -> safe
name mapping and the null tokens seen, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines import ingest
from pipelines.runs import JobArgumentParser, add_config_flag, execute


def _tokens(text: str) -> list[str]:
    """``NA,N/A,`` -> ``["NA", "N/A", ""]``; ``''`` -> ``[""]`` (empty fields only)."""
    return [t.strip() for t in text.split(",")]


def build_parser() -> JobArgumentParser:
    parser = JobArgumentParser(prog="ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--source", metavar="PATH_OR_GLOB", help="file, folder or glob of input files")
    parser.add_argument("--format", choices=["csv", "parquet", "json", "delta"])
    parser.add_argument("--output", metavar="DIR", help="output root (bronze, quarantine, _ingested_files, _runs)")
    parser.add_argument("--schema", dest="schema_file", metavar="FILE", help="DDL, JSON or YAML schema file")
    parser.add_argument("--name", help="dataset name recorded in the table properties")
    parser.add_argument("--mode", choices=["overwrite", "append"])
    parser.add_argument("--force", action="store_true", default=None, help="append files already ingested")
    parser.add_argument("--target-file-mb", type=int, metavar="MB", help="output file size target")
    parser.add_argument("--infer-sample-rows", type=int, metavar="N", help="rows sampled to infer types")
    parser.add_argument("--delimiter", help="CSV delimiter (default: detected from the header line)")
    parser.add_argument("--no-header", dest="header", action="store_false", default=None, help="CSV has no header")
    parser.add_argument("--encoding", help="text encoding of CSV/JSON files (default UTF-8)")
    parser.add_argument("--no-multiline", dest="multiline", action="store_false", default=None,
                        help="CSV records are single lines: split big files across tasks")
    parser.add_argument("--null-values", type=_tokens, metavar="A,B,...",
                        help="comma-separated text meaning null in CSV/JSON ('' = empty only; "
                        "default: '',NA,N/A,null,NULL,None,#N/A)")
    parser.add_argument("--dry-run", "--print-schema", dest="dry_run", action="store_true", default=None,
                        help="print the inferred schema, name mapping and null tokens seen; write nothing")
    add_config_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return execute("ingest", build_parser(), argv, ingest.run)


if __name__ == "__main__":
    raise SystemExit(main())
