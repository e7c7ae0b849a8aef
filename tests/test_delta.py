"""The Delta layer: round trips, overwrite-where, crash safety, concurrency, orphan files."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import deltalake
import polars as pl
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import types as T

from pipelines import delta
from pipelines.errors import UserError

REPO = Path(__file__).resolve().parents[1]

SCHEMA = T.StructType(
    [
        T.StructField("_row_id", T.LongType()),
        T.StructField("column", T.StringType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("label", T.StringType()),
        T.StructField("ts", T.TimestampType()),
    ]
)
ROWS = [
    (1, "a", 1.5, "x", dt.datetime(2024, 1, 1, 12, 0, 0)),
    (2, "a", float("nan"), None, dt.datetime(2024, 1, 2, 0, 0, 0, 123456)),
    (3, "b", float("inf"), "ü ñ", None),
    (4, "b", None, "y", dt.datetime(1999, 12, 31, 23, 59, 59)),
    (5, "../x", -0.0, "z", dt.datetime(2024, 6, 1)),
]


@pytest.fixture()
def delta_rs():
    """Tests of the delta-rs writer's own layout force it, whichever backend the session has."""
    saved = delta.forced_backend()
    delta.set_backend("delta-rs")
    yield
    delta.set_backend(saved)


@pytest.fixture()
def sdf(spark):
    return spark.createDataFrame(ROWS, SCHEMA)


def _spark_from_polars(spark, frame: pl.DataFrame, schema: T.StructType):
    # Rebuild through Python rows with the explicit schema: an independent path from
    # the Arrow reader under test.
    return spark.createDataFrame([tuple(r) for r in frame.select(schema.names).iter_rows()], schema)


def test_spark_to_delta_to_polars_round_trip(spark, sdf, tmp_path):
    path = str(tmp_path / "t")
    version = delta.write_table(sdf, path, mode="overwrite", partition_by=["column"])
    assert version == 0

    back = _spark_from_polars(spark, delta.scan_table(path).collect(), SCHEMA)
    assert_df_equality(back, sdf, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True)

    # Other Delta readers see the same rows.
    table = deltalake.DeltaTable(path).to_pyarrow_table()
    assert sorted(table.column("_row_id").to_pylist()) == [1, 2, 3, 4, 5]
    assert pl.read_delta(path).height == 5
    # A partition value like "../x" is escaped into one folder inside the table.
    assert all(Path(p).resolve().is_relative_to(Path(path).resolve()) for p in deltalake.DeltaTable(path).file_uris())


def test_unpartitioned_spark_write_round_trip_and_int64_timestamps(spark, sdf, tmp_path, delta_rs):
    """Unpartitioned writes go through Spark's Parquet writer; a session set to INT96 does not leak into Delta."""
    import pyarrow.parquet as pq

    path = str(tmp_path / "t")
    key = "spark.sql.parquet.outputTimestampType"
    spark.conf.set(key, "INT96")
    try:
        assert delta.write_table(sdf, path, mode="overwrite") == 0
        assert spark.conf.get(key) == "INT96", "the session setting is restored"
    finally:
        spark.conf.set(key, "TIMESTAMP_MICROS")
    files = deltalake.DeltaTable(path).file_uris()
    assert files and all("/w-" in f for f in files)
    for f in files:
        column = pq.ParquetFile(f.removeprefix("file://")).schema.column(4)
        assert column.name == "ts" and column.physical_type == "INT64"
    back = _spark_from_polars(spark, delta.scan_table(path).collect(), SCHEMA)
    assert_df_equality(back, sdf, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True)
    assert_df_equality(delta.read_table(spark, path), sdf, ignore_row_order=True, ignore_nullable=True,
                       allow_nan_equality=True)
    actions = pa.table(deltalake.DeltaTable(path).get_add_actions(flatten=True))
    assert sum(actions.column("num_records").to_pylist()) == 5  # row counts from the footers


def test_polars_to_delta_to_spark_round_trip(spark, sdf, tmp_path):
    path = str(tmp_path / "t")
    frame = pl.DataFrame(
        [list(r) for r in ROWS],
        schema={"_row_id": pl.Int64, "column": pl.Utf8, "value": pl.Float64, "label": pl.Utf8, "ts": pl.Datetime("us", "UTC")},
        orient="row",
    )
    delta.write_polars(frame, path, mode="overwrite", partition_by=["column"])
    back = delta.read_table(spark, path)
    assert back.columns == SCHEMA.names
    assert_df_equality(back, sdf, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True)


def test_overwrite_where_replaces_exactly_its_partition(spark, sdf, tmp_path):
    path = str(tmp_path / "t")
    delta.write_table(sdf, path, mode="overwrite", partition_by=["column"])
    before = {f for f in deltalake.DeltaTable(path).file_uris() if "column=a" not in f}

    new_a = spark.createDataFrame([(10, "a", 9.0, "new", None)], SCHEMA)
    delta.write_table(new_a, path, mode="overwrite", partition_by=["column"], replace_where={"column": "a"})

    after = deltalake.DeltaTable(path).file_uris()
    assert before <= set(after), "files of other partitions must be kept as they are"
    expected = sdf.where("column != 'a'").unionByName(new_a)
    assert_df_equality(
        delta.read_table(spark, path), expected, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True
    )
    # The first commit is "CREATE TABLE" on delta-rs, "WRITE" on native Delta.
    assert [h["version"] for h in delta.history(path)] == [1, 0] and delta.history(path)[0]["operation"] == "WRITE"


def test_time_travel_and_append(spark, sdf, tmp_path):
    path = str(tmp_path / "t")
    delta.write_table(sdf, path, mode="overwrite")
    delta.write_table(sdf, path, mode="append")
    assert delta.table_version(path) == 1
    assert delta.read_table(spark, path).count() == 10
    assert delta.read_table(spark, path, version=0).count() == 5
    assert delta.scan_table(path, version=0).collect().height == 5


def test_empty_write_creates_a_readable_table(spark, tmp_path):
    path = str(tmp_path / "t")
    delta.write_table(spark.createDataFrame([], SCHEMA), path, mode="overwrite")
    df = delta.read_table(spark, path)
    assert df.count() == 0 and df.columns == SCHEMA.names


def test_properties_are_stored_in_table_metadata(spark, sdf, tmp_path):
    path = str(tmp_path / "t")
    delta.write_table(sdf, path, mode="overwrite", properties={"source": "a b", "n": "5"})
    assert delta.table_properties(path) == {"source": "a b", "n": "5"}


def test_orphaned_parquet_file_is_not_read(spark, sdf, tmp_path):
    path = str(tmp_path / "t")
    delta.write_table(sdf, path, mode="overwrite")
    # What a killed writer leaves: a valid Parquet file that no commit references.
    pa_table = pa.table({"_row_id": [99, 100], "column": ["a", "a"], "value": [0.0, 0.0], "label": ["o", "o"]})
    import pyarrow.parquet as pq

    pq.write_table(pa_table, os.path.join(path, "part-orphan.parquet"))
    folder = spark.read.option("recursiveFileLookup", True).option("pathGlobFilter", "*.parquet").parquet(path)
    assert folder.count() == 7, "a folder read sees the orphan (this is the bug we avoid)"
    assert delta.read_table(spark, path).count() == 5
    assert delta.scan_table(path).collect().height == 5


def test_reading_a_missing_table_is_a_user_error(spark, tmp_path):
    with pytest.raises(UserError, match="not a Delta table"):
        delta.read_table(spark, str(tmp_path / "nope"))


def test_a_truncated_commit_is_one_line_naming_it(spark, tmp_path):
    """The last commit cut in half (on native Delta its Hadoop ``.crc`` no longer matches):
    a job ends with exit 2 and one line naming the commit file, on either backend."""
    path = str(tmp_path / "t")
    delta.write_table(spark.range(5).selectExpr("id AS _row_id"), path, mode="overwrite")
    delta.write_table(spark.range(5, 8).selectExpr("id AS _row_id"), path, mode="append")
    last = sorted((tmp_path / "t" / "_delta_log").glob("*.json"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    from pipelines.runs import Run, finish

    run = Run(job="test", output=str(tmp_path / "unused"), record=False)
    code, _ = finish(run, lambda: delta.read_table(spark, path).count())
    assert code == 2 and run.status == "failed"
    assert f"{last}: line " in run.error and "not valid JSON" in run.error and "\n" not in run.error


_SPARK_WRITER = textwrap.dedent(
    """
    import sys
    from pyspark.sql import SparkSession
    from pipelines import delta
    spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    df = spark.range(0, 200_000_000, numPartitions=40).selectExpr("id AS _row_id", "rand(7) AS value", "id % 3 AS g")
    delta.write_table(df, sys.argv[1], mode="overwrite", target_file_bytes=1 << 20)
    print("COMMITTED", flush=True)
    """
)


_CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "SPARK_REMOTE", "SPARK_CONNECT_AUTHENTICATE_TOKEN")


def test_sigkill_mid_write_leaves_previous_version(spark, tmp_path):
    path = str(tmp_path / "t")
    first = spark.range(0, 1000).selectExpr("id AS _row_id", "rand(1) AS value", "id % 3 AS g")
    delta.write_table(first, path, mode="overwrite")
    committed = {Path(p).name for p in deltalake.DeltaTable(path).file_uris()}

    # The writer is a classic local session of its own: under the Connect tier this process's
    # environment carries pyspark's Connect state (SPARK_CONNECT_MODE_ENABLED, SPARK_LOCAL_REMOTE, ...),
    # with which the child's builder would refuse to start (CONNECT_URL_NOT_SET).
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_ENV}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SPARK_WRITER, path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the kill reaches the JVM and its Python workers too
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = {p.name for p in Path(path).rglob("part-*.parquet")} - committed
            if new:
                break
            assert proc.poll() is None, "writer exited before writing any file"
            time.sleep(0.05)
        else:
            pytest.fail("the writer wrote no file in 120 s")
        time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a writer that died early: its assertion shows
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert b"COMMITTED" not in proc.stdout.read()

    assert delta.table_version(path) == 0
    assert delta.read_table(spark, path).count() == 1000
    assert {p.name for p in Path(path).rglob("part-*.parquet")} - committed, "the kill left partial files"
    assert pl.read_delta(path).height == 1000


_POLARS_APPENDER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from pipelines import delta
    path, writer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        ids = pa.array([writer * 1_000_000 + i * 100 + j for j in range(100)], pa.int64())
        delta.write_polars(pa.table({"_row_id": ids, "writer": pa.array([writer] * 100, pa.int64())}), path, mode="append")
    """
)


def test_concurrent_appends_lose_no_rows(tmp_path):
    path = str(tmp_path / "t")
    n = 15
    procs = [
        subprocess.Popen([sys.executable, "-c", _POLARS_APPENDER, path, str(w), str(n)], stderr=subprocess.PIPE)
        for w in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    frame = pl.read_delta(path)
    assert frame.height == 2 * n * 100
    assert frame["_row_id"].n_unique() == 2 * n * 100
    assert delta.table_version(path) == 2 * n - 1
