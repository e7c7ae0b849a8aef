"""Tokenising: global bin edges fitted in Spark, Polars kernels per file (:mod:`pipelines.engine`).

:mod:`pipelines.tokenize.kernels` holds the row-local numpy/Polars kernels (no Spark);
:mod:`pipelines.tokenize.stage` fits the tokenizer and runs the job.
"""

from pipelines.tokenize.stage import (
    fit_bin_statistics,
    fit_edges,
    needs_spark,
    read_tokenizer,
    run,
    token_classes,
    tokenizer_table,
)

__all__ = ["fit_bin_statistics", "fit_edges", "needs_spark", "read_tokenizer", "run", "token_classes", "tokenizer_table"]
