"""Built-in demo source for the end-to-end pipeline.

A deterministic raw CSV with the column kinds the stages care about: a heavy-tailed
``amount`` with many exact zeros (a mixed column), a bimodal ``score``, an integer
``age``, a categorical ``segment`` with missing values, and two features ``x``/``y``
drawn around four well-separated centres (so cluster_eval has a true k of 4).
Generated with a seeded numpy generator, so every run writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines import fs

DEFAULT_ROWS = 20_000
DEFAULT_K = 4


def write_default_source(path: str, *, rows: int = DEFAULT_ROWS, seed: int = 7,
                         shift: Mapping[str, float] | None = None) -> str:
    """Write the demo CSV to ``path`` and return it. Small by design: it is built on the driver.

    ``shift`` adds a constant to numeric columns (a drifted batch for the drift demo).
    """
    rng = np.random.default_rng(seed)
    centres = np.array([[-6.0, -6.0], [6.0, -6.0], [-6.0, 6.0], [6.0, 6.0]])
    cluster = rng.integers(0, DEFAULT_K, rows)
    xy = centres[cluster] + rng.normal(0.0, 1.0, (rows, 2))
    amount = np.where(rng.random(rows) < 0.3, 0.0, np.round(rng.lognormal(3.0, 1.2, rows), 2))
    score = np.where(rng.random(rows) < 0.6, rng.normal(-2.0, 0.5, rows), rng.normal(3.0, 1.0, rows))
    segment = np.array(["retail", "business", "private"], dtype=object)[rng.integers(0, 3, rows)]
    segment[rng.random(rows) < 0.05] = None
    table = pa.table(
        {
            "customer_id": pa.array(np.arange(1, rows + 1), pa.int64()),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "amount": amount,
            "score": score,
            "age": pa.array(rng.integers(18, 90, rows), pa.int64()),
            "segment": pa.array(segment, pa.string()),
        }
    )
    for name, offset in (shift or {}).items():
        table = table.set_column(table.schema.get_field_index(name), name, pc.add(table.column(name), offset))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    fs.write_bytes(path, sink.getvalue().to_pybytes())
    return path
