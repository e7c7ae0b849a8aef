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


# scikit-learn's diabetes data (Efron et al. 2004) under the headers a spreadsheet export
# would carry: spaces, parentheses, units and unicode.
DIABETES_HEADER = (
    "Age (years)", "Sex", "BMI (kg/m²)", "Blood pressure (mm Hg)", "Total cholesterol (TC)", "LDL", "HDL",
    "TC / HDL", "log Triglycerides (LTG)", "Blood sugar (GLU)", "Progression (1 yr)",
)
DIABETES_MISSING_COLUMNS = (2, 3, 4, 5, 6, 9)  # the columns where the export writes null tokens
DIABETES_NULL_TOKENS = ("NA", "N/A", "null")


def write_diabetes_export(path: str, *, missing: float = 0.04, seed: int = 0) -> str:
    """Write scikit-learn's raw diabetes data (442 rows) as a messy CSV export; return ``path``.

    A seeded ``missing`` fraction of the cells of :data:`DIABETES_MISSING_COLUMNS` is
    written as one of :data:`DIABETES_NULL_TOKENS` (in turn), the way exports write "no
    value". Numbers are written with ``repr``, so they read back exactly.
    """
    import csv
    import io

    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(DIABETES_HEADER)
    n_tokens = 0
    for features, target in zip(data.data, data.target, strict=True):
        row = [_number(v) for v in (*features, target)]
        for j in DIABETES_MISSING_COLUMNS:
            if rng.random() < missing:
                row[j] = DIABETES_NULL_TOKENS[n_tokens % len(DIABETES_NULL_TOKENS)]
                n_tokens += 1
        writer.writerow(row)
    fs.write_text(path, out.getvalue())
    return path


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
