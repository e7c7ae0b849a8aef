"""Drift between two versions of a table: PSI, exact KS, chi-square, rates, moments, model fit.

:mod:`pipelines.drift.kernels` holds the numpy math (no Spark); :mod:`pipelines.drift.stage`
runs the Spark passes and the job; :mod:`pipelines.drift.report` renders the report.
"""

from pipelines.drift.stage import parse_table_version, read_summary, run

__all__ = ["parse_table_version", "read_summary", "run"]
