"""The engine: units from the Delta log, both schedulers, one commit, failures that commit nothing."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import delta
from pipelines.engine import Engine, Reducer, Sink, arrow_schema, source
from pipelines.errors import DataFileError, UserError

N = 10_000


@pytest.fixture(scope="module", autouse=True)
def _kernels_by_value():
    """Spark's workers cannot import this test module: its kernels travel by value."""
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
OUT_SCHEMA = arrow_schema({"_row_id": pl.Int64, "x": pl.Float64, "y": pl.Float64})


def _double(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(y=pl.col("x") * 2)


def _count_and_sum() -> Reducer:
    return Reducer(lambda df: {"n": df.height, "sum": float(df["x"].sum())},
                   lambda a, b: {"n": a["n"] + b["n"], "sum": a["sum"] + b["sum"]})


@pytest.fixture
def table(tmp_path):
    """N rows in 4 files (one commit each)."""
    path = str(tmp_path / "src")
    for i, part in enumerate(np.array_split(np.arange(N), 4)):
        frame = pl.DataFrame({"_row_id": part, "x": part.astype(float)})
        delta.write_polars(frame, path, mode="overwrite" if i == 0 else "append")
    return path


@pytest.fixture(params=["local", "spark"])
def engine(request):
    spark = request.getfixturevalue("spark") if request.param == "spark" else None
    return Engine(request.param, spark, batch_rows=777)


def test_units_are_the_log_files_in_path_order(table):
    src = source(table)
    assert [u.file for u in src.units] == sorted(delta._open(table).file_uris())
    assert src.schema.names == ["_row_id", "x"]


def test_map_writes_every_row_once_in_one_commit(engine, table, tmp_path):
    out = str(tmp_path / "out")
    result = engine.map(table, _double, [Sink(out, OUT_SCHEMA)], reducer=_count_and_sum())
    got = pl.read_delta(out).sort("_row_id")
    assert result.rows == got.height == N and result.units == 4 and result.path == "files"
    assert got["_row_id"].to_list() == list(range(N)) and (got["y"] == got["x"] * 2).all()
    assert result.partial == {"n": N, "sum": float(sum(range(N)))}
    assert [h["operation"] for h in delta.history(out)] == ["CREATE TABLE"]
    # a task keeps its file's row order
    for uri in delta._open(out).file_uris():
        ids = pq.read_table(uri)["_row_id"].to_numpy()
        assert np.all(np.diff(ids) == 1)


def test_both_schedulers_write_the_same_rows(spark, table, tmp_path):
    paths = {}
    for name in ("local", "spark"):
        paths[name] = str(tmp_path / name)
        Engine(name, spark if name == "spark" else None).map(table, _double, [Sink(paths[name], OUT_SCHEMA)])
    a, b = (pl.read_delta(p).sort("_row_id") for p in paths.values())
    assert a.equals(b)


def test_partition_values_come_from_the_log_with_their_types(engine, tmp_path):
    src = str(tmp_path / "parted")
    frame = pl.DataFrame({"_row_id": list(range(100)), "k": [i % 3 for i in range(100)], "x": [float(i) for i in range(100)]})
    delta.write_polars(frame, src, mode="overwrite", partition_by=["k"])
    assert "k" not in pq.read_table(delta._open(src).file_uris()[0]).column_names
    out = str(tmp_path / "out")
    schema = arrow_schema({"_row_id": pl.Int64, "k": pl.Int64, "x": pl.Float64})
    result = engine.map(src, lambda df: df, [Sink(out, schema, ("k",))])
    assert result.units == 3
    got = pl.read_delta(out).select(frame.columns).sort("_row_id")
    assert got.equals(frame)


def test_reduce_merges_the_units_partials(engine, table):
    result = engine.reduce(table, _count_and_sum(), columns=["x"])
    assert result.partial == {"n": N, "sum": float(sum(range(N)))} and result.rows == N


def test_a_kernel_error_fails_naming_the_file_and_commits_nothing(engine, table, tmp_path):
    out = str(tmp_path / "out")
    engine.map(table, _double, [Sink(out, OUT_SCHEMA)])
    before = delta._open(out).file_uris()
    bad = [u.file for u in source(table).units if pq.read_table(u.file)["_row_id"][0].as_py() >= 5000]

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        if df["_row_id"][0] >= 5000:
            raise ZeroDivisionError("bad batch")
        return _double(df)

    with pytest.raises(RuntimeError, match="ZeroDivisionError: bad batch") as info:
        engine.map(table, kernel, [Sink(out, OUT_SCHEMA)])
    assert str(info.value).startswith(f"{bad[0]}: ") and "(and 1 more file(s))" in str(info.value)
    assert delta.table_version(out) == 0 and delta._open(out).file_uris() == before
    assert sorted(str(p) for p in (tmp_path / "out").rglob("*.parquet")) == sorted(before), "failed tasks left files"


def test_an_unreadable_data_file_is_a_data_file_error_naming_it(engine, table, tmp_path):
    """A committed file overwritten with random bytes: one line naming the file (exit 1 in a job),
    not a kernel's RuntimeError with its traceback; nothing is committed."""
    from pipelines.runs import read_fault

    victim = source(table).units[2].file.removeprefix("file://")
    size = os.path.getsize(victim)
    with open(victim, "wb") as handle:
        handle.write(np.random.default_rng(0).bytes(size))
    with pytest.raises(DataFileError) as info:
        engine.map(table, _double, [Sink(str(tmp_path / "out"), OUT_SCHEMA)])
    line = read_fault(info.value)
    assert line == str(info.value) and "\n" not in line
    assert line.startswith(f"{victim}: cannot read this data file (Arrow")
    assert not delta.table_exists(str(tmp_path / "out"))


def test_a_user_error_in_a_kernel_stays_a_user_error(engine, table, tmp_path):
    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        raise UserError("column 'x': bad value")

    with pytest.raises(UserError, match="column 'x': bad value"):
        engine.map(table, kernel, [Sink(str(tmp_path / "out"), OUT_SCHEMA)])
    assert not delta.table_exists(str(tmp_path / "out"))


def test_a_killed_task_files_are_never_committed(spark, table, tmp_path):
    out = str(tmp_path / "out")
    engine = Engine("spark", spark, batch_rows=500)
    engine.map(table, _double, [Sink(out, OUT_SCHEMA)])
    before = delta._open(out).file_uris()

    def kernel(df: pl.DataFrame) -> pl.DataFrame:
        if df["_row_id"][0] >= N - 1000:
            os._exit(3)  # the Python worker dies mid-task, after it wrote some rows
        return _double(df)

    with pytest.raises(Exception, match="(?i)crash|exit|worker"):
        engine.map(table, kernel, [Sink(out, OUT_SCHEMA)])
    assert delta.table_version(out) == 0 and delta._open(out).file_uris() == before
    assert pl.read_delta(out).height == N


def test_a_parquet_file_is_a_source_and_big_files_split_by_row_group(engine, tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"_row_id": list(range(1000)), "x": [1.0] * 1000}), path, row_group_size=100)
    src = source(str(path), split_bytes=1)
    assert len(src.units) == 10 and src.units[3].row_groups == (3,)
    engine.split_bytes = 1
    result = engine.map(str(path), _double, [Sink(str(tmp_path / "out"), OUT_SCHEMA)])
    assert result.units == 10
    assert pl.read_delta(str(tmp_path / "out")).sort("_row_id")["_row_id"].to_list() == list(range(1000))


def test_spark_tasks_size_polars_to_the_task_cores(spark, table, tmp_path):
    result = Engine("spark", spark).map(table, _double, [Sink(str(tmp_path / "out"), OUT_SCHEMA)])
    assert result.polars_threads == int(spark.conf.get("spark.task.cpus", "1"))
