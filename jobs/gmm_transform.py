"""Apply fitted GMM normalisers to a table, or invert model output back to values.

    spark-submit jobs/gmm_transform.py --fit-dir DIR --input TABLE --output OUT [--layout long|wide|onehot] [--seed N]
    spark-submit jobs/gmm_transform.py --inverse --fit-dir DIR --input OUT/transformed_values --output BACK

Writes OUT/transformed_values (wide or onehot) and OUT/feature_values (long, by column),
or BACK/inverted_values; the run summary (clip fractions, max abs error, unknown
categories, NaN/inf counts) goes to <output>/_runs/ and is the last stdout line.
``--engine local`` runs the same tasks on local threads without starting Spark.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.gmm import transform
from pipelines.runs import JobArgumentParser, add_config_flag, add_engine_flag, execute


def build_parser() -> JobArgumentParser:
    """Flags of ``gmm_transform``; each ``dest`` is a key of the ``gmm_transform`` config section."""
    p = JobArgumentParser(prog="gmm_transform", description=__doc__.splitlines()[0])
    p.add_argument("--fit-dir", dest="fit_dir", metavar="DIR", help="a gmm_fit output (holds DIR/models)")
    p.add_argument("--input", metavar="TABLE", help="Delta table or Parquet: bronze rows, or with --inverse a transformed_values table")
    p.add_argument("--output", metavar="DIR", help="receives feature_values/transformed_values (or inverted_values) and _runs/")
    p.add_argument("--layout", choices=["long", "wide", "onehot"], help="transformed_values layout (default wide; long writes only "
                   "feature_values); with --inverse the layout is detected from the input")
    p.add_argument("--seed", type=int, help="seed of the per-row mode sampling (default 42)")
    p.add_argument("--sampling", choices=list(transform.kernels.SAMPLINGS),
                   help="tail-safe (default: re-sample a mode that would clip the row) or rdt (RDT exactly)")
    p.add_argument("--inverse", action="store_true", default=None, help="invert a transformed_values table")
    add_engine_flag(p)
    add_config_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return execute("gmm_transform", build_parser(), argv, transform.run, needs_spark=transform.needs_spark)


if __name__ == "__main__":
    raise SystemExit(main())
