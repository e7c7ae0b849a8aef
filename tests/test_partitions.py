"""The Polars engine of the per-partition mechanism (no Spark): order, errors, atomicity."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines import delta
from pipelines.partitions import polars_map


@pytest.fixture
def source(tmp_path):
    path = str(tmp_path / "src")
    delta.write_polars(pl.DataFrame({"_row_id": range(10_000), "x": [float(i) for i in range(10_000)]}), path)
    return path


def test_every_row_is_written_once_in_order(source, tmp_path):
    out = str(tmp_path / "out")
    n = polars_map(source, lambda df: df.with_columns(y=pl.col("x") * 2), out, batch_rows=777)
    got = pl.read_delta(out)
    assert n == got.height == 10_000
    assert got["_row_id"].to_list() == list(range(10_000))
    assert (got["y"] == got["x"] * 2).all()


def test_a_kernel_error_propagates_and_nothing_is_committed(source, tmp_path):
    out = str(tmp_path / "out")
    calls = []

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        calls.append(df.height)
        if len(calls) == 4:
            raise ZeroDivisionError("batch 4")
        return df

    with pytest.raises(ZeroDivisionError, match="batch 4"):
        polars_map(source, kernel, out, batch_rows=1000)
    assert not delta.table_exists(out)
    assert not list((tmp_path / "out").rglob("*.parquet")), "files of the failed run were left behind"


def test_a_single_parquet_file_is_a_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"_row_id": list(range(100)), "x": [1.0] * 100}), path)
    assert not delta.table_exists(str(path))
    n = polars_map(str(path), lambda df: df, str(tmp_path / "out"), batch_rows=30)
    assert n == 100 and pl.read_delta(str(tmp_path / "out")).height == 100
