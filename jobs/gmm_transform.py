"""Apply fitted GMM normalisers to a table, or invert model output back to values.

    spark-submit jobs/gmm_transform.py --fit-dir DIR --input TABLE --output OUT [--layout long|wide|onehot] [--seed N]
    spark-submit jobs/gmm_transform.py --inverse --fit-dir DIR --input OUT/transformed_values --output BACK

Writes OUT/transformed_values (wide or onehot) and OUT/feature_values (long, by column),
or BACK/inverted_values; the run summary (clip fractions, max abs error, unknown
categories, NaN/inf counts) goes to <output>/_runs/ and is the last stdout line.
``--engine polars`` runs the same kernels without starting Spark.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.gmm import transform


def build_parser():
    return transform.build_parser("gmm_transform")


def main(argv: Sequence[str] | None = None) -> int:
    return transform.main(argv, prog="gmm_transform")


if __name__ == "__main__":
    raise SystemExit(main())
