"""Tokenising: global bin edges fitted in Spark, Polars kernels per partition.

:mod:`pipelines.tokenize.kernels` holds the row-local numpy/Polars kernels (no Spark);
:mod:`pipelines.tokenize.stage` fits the tokenizer and runs the job.
"""

from pipelines.tokenize.stage import (
    detokenize,
    fit_bin_statistics,
    fit_edges,
    read_tokenizer,
    run,
    tokenize,
    tokenizer_table,
)

__all__ = ["detokenize", "fit_bin_statistics", "fit_edges", "read_tokenizer", "run", "tokenize", "tokenizer_table"]
