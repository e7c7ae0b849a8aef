"""gmm_fit's summary pass on the driver and on Spark, and the check that they are the same."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipelines import delta
from pipelines.gmm.fit import _Input
from pipelines.gmm.summary import ColumnSpec, ColumnSummary
from pipelines.runs import Run


def both_summaries(spark, path: str, specs: Sequence[ColumnSpec], *, max_bins: int):
    """``(driver, spark)``: each path's ``(dtypes, summaries, details["summary_on"])`` of the table at ``path``."""
    version = delta.table_version(path)
    out = []
    for driver_rows in (10**9, 0):
        source, run = _Input(spark, path, version, driver_rows=driver_rows), Run(job="test", output="unused")
        summaries = source.summarize(specs, max_bins=max_bins, run=run)
        out.append((source.dtypes, summaries, run.details["summary_on"]))
    return tuple(out)


def assert_same_summaries(got: Mapping[str, ColumnSummary], want: Mapping[str, ColumnSummary]) -> None:
    """Every field equal, the arrays bit for bit."""
    assert list(got) == list(want)
    for column, g in got.items():
        w = want[column]
        for name in ("values", "counts", "variances"):
            a, b = getattr(g, name), getattr(w, name)
            assert a.dtype == b.dtype == np.float64 and a.tobytes() == b.tobytes(), (column, name)
        assert (g.spec, g.n_rows, g.n_null, g.exact, g.distinct_lower_bound, g.special_counts) == (
            w.spec, w.n_rows, w.n_null, w.exact, w.distinct_lower_bound, w.special_counts), column
        assert dict(g.categories) == dict(w.categories), column
