"""Delta logs other engines trust: stats, partition values, properties, and tables that cross backends.

The cross-engine tests need Spark's native Delta in the session (the Delta jars, which
``make test`` fetches); without them they skip, and the rest runs on delta-rs alone.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import deltalake
import polars as pl
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines import delta

UTC = dt.UTC


def _has_native(spark) -> bool:
    return "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", None) or "")


@pytest.fixture()
def use():
    """``use("native")`` / ``use("delta-rs")`` forces a backend for the rest of the test."""
    saved = delta.forced_backend()
    yield delta.set_backend
    delta.set_backend(saved)


@pytest.fixture()
def native(spark):
    if not _has_native(spark):
        pytest.skip("no native Delta in this session (the Delta jars were not fetched)")


def _commits(path: str) -> list[dict]:
    """Every action of every commit, in order."""
    out = []
    for f in sorted(Path(path, "_delta_log").glob("*.json")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def _adds(path: str) -> list[dict]:
    live = {}
    for action in _commits(path):
        if "add" in action:
            live[action["add"]["path"]] = action["add"]
        elif "remove" in action:
            live.pop(action["remove"]["path"], None)
    return list(live.values())


AWKWARD = ["é/..", "a=b", "50%", "with space", None, "日本", "x"]


@pytest.mark.parametrize("backend", ["delta-rs", "native"])
def test_awkward_partition_values_come_from_the_log(spark, tmp_path, use, backend):
    if backend == "native" and not _has_native(spark):
        pytest.skip("no native Delta in this session")
    path = str(tmp_path / "t")
    table = pa.table({"p": AWKWARD, "v": list(range(len(AWKWARD)))})
    deltalake.write_deltalake(path, table, partition_by=["p"])
    use(backend)
    back = delta.read_table(spark, path)
    assert back.columns == ["p", "v"]
    expected = spark.createDataFrame(list(zip(AWKWARD, range(len(AWKWARD)), strict=True)), "p string, v long")
    assert_df_equality(back, expected, ignore_row_order=True, ignore_nullable=True)
    # The same rows deltalake and polars return.
    assert sorted(pl.read_delta(path).rows(), key=str) == sorted(zip(AWKWARD, range(len(AWKWARD)), strict=True), key=str)


def _typed_frame() -> pl.DataFrame:
    long = "z" * 40
    return pl.DataFrame(
        {
            "i": [3, -7, None, 12],
            "f": [1.5, -2.25, 0.0, None],
            "nan": [1.0, float("nan"), 2.0, 3.0],
            "s": ["b", "a", None, "c"],
            "long": ["a" * 40, long, "m", None],
            "d": [dt.date(2024, 1, 2), dt.date(1999, 12, 31), None, dt.date(2024, 1, 3)],
            "ts": [dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), None,
                   dt.datetime(2020, 1, 1, 0, 0, 0, 1, tzinfo=UTC), dt.datetime(2021, 6, 1, tzinfo=UTC)],
            "ntz": [dt.datetime(2024, 1, 2, 3, 4, 5), None, None, dt.datetime(2024, 1, 1)],
            "b": [True, False, None, True],
            "g": ["x", "x", "y", "y"],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "ntz": pl.Datetime("us")},
    )


def _check_stats(path: str, frame: pl.DataFrame, partition_by: list[str]) -> None:
    adds = _adds(path)
    assert adds
    for add in adds:
        stats = json.loads(add["stats"])
        rows = frame
        for c in partition_by:
            rows = rows.filter(pl.col(c) == add["partitionValues"][c])
        assert stats["numRecords"] == rows.height
        lo, hi = stats["minValues"], stats["maxValues"]
        assert lo["i"] == rows["i"].min() and hi["i"] == rows["i"].max()
        assert lo["s"] == rows["s"].min() and hi["s"] == rows["s"].max()
        assert lo["d"] == rows["d"].min().isoformat() and hi["d"] == rows["d"].max().isoformat()
        # Milliseconds, widened outwards: a bound never excludes a row.
        assert dt.datetime.fromisoformat(lo["ts"]) <= rows["ts"].min()
        assert dt.datetime.fromisoformat(hi["ts"]) >= rows["ts"].max()
        assert dt.datetime.fromisoformat(hi["ts"]) - rows["ts"].max() < dt.timedelta(milliseconds=1)
        # (Spark reads a zone-less Arrow timestamp as TIMESTAMP, so its files carry a "Z".)
        assert dt.datetime.fromisoformat(lo["ntz"]).replace(tzinfo=None) == rows["ntz"].min()
        assert "b" not in lo, "Delta collects no min/max for booleans"
        assert len(lo["long"]) <= 32 and lo["long"] <= rows["long"].min()
        assert "long" not in hi or hi["long"] >= rows["long"].max()
        assert stats["nullCount"]["i"] == rows["i"].null_count()
        if "f" in lo:  # floats get bounds only from a writer that saw every value
            assert lo["f"] == rows["f"].min() and hi["f"] == rows["f"].max()
        nan_rows = rows.filter(pl.col("nan").is_nan()).height
        assert not nan_rows or "nan" not in hi, "Parquet's float stats ignore NaN: no bound then"


def test_min_max_stats_in_every_add_action(spark, tmp_path, use):
    use("delta-rs")
    frame = _typed_frame()
    delta.write_polars(frame, str(tmp_path / "polars"), partition_by=["g"])
    _check_stats(str(tmp_path / "polars"), frame, ["g"])
    assert "f" in json.loads(_adds(str(tmp_path / "polars"))[0]["stats"])["minValues"]

    sdf = spark.createDataFrame(frame.to_arrow())
    delta.write_table(sdf, str(tmp_path / "spark_part"), partition_by=["g"])
    _check_stats(str(tmp_path / "spark_part"), frame, ["g"])
    delta.write_table(sdf.coalesce(1), str(tmp_path / "spark_flat"))
    _check_stats(str(tmp_path / "spark_flat"), frame, [])
    # The stats are usable: deltalake skips files by them and still returns every row.
    got = deltalake.DeltaTable(str(tmp_path / "spark_part")).to_pyarrow_table(filters=[("i", ">", 5)])
    assert got.column("i").to_pylist() == [12]


def test_no_success_markers_in_table_folders(spark, tmp_path, use):
    use("delta-rs")
    path = tmp_path / "t"
    delta.write_table(spark.range(10), str(path))
    delta.write_table(spark.range(10), str(path), mode="append")
    assert delta.read_table(spark, str(path)).count() == 20
    assert not [p for p in path.rglob("*") if p.name.startswith("_SUCCESS")]


def test_partition_values_in_the_protocol_format(spark, tmp_path, use):
    use("delta-rs")
    path = str(tmp_path / "t")
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    frame = pl.DataFrame(
        {"ts": [ts], "ntz": [dt.datetime(2024, 1, 2, 3, 4, 5)], "d": [dt.date(2024, 1, 2)], "b": [True], "i": [7], "v": [1.0]},
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "ntz": pl.Datetime("us")},
    )
    delta.write_polars(frame, path, partition_by=["ts", "ntz", "d", "b", "i"])
    (add,) = _adds(path)
    assert add["partitionValues"] == {
        "ts": "2024-01-02T03:04:05.678901Z",
        "ntz": "2024-01-02 03:04:05.000000",
        "d": "2024-01-02",
        "b": "true",
        "i": "7",
    }
    assert pl.read_delta(path).row(0, named=True)["ts"] == ts
    row = delta.read_table(spark, path).first()
    assert row["ts"] == ts.replace(tzinfo=None) and row["d"] == dt.date(2024, 1, 2) and row["b"] is True
    if _has_native(spark):
        use("native")
        assert delta.read_table(spark, path).first() == row
    # overwrite-where on a timestamp partition finds it by the same string
    use("delta-rs")
    delta.write_polars(frame.with_columns(v=pl.lit(2.0)), path, mode="overwrite", partition_by=["ts", "ntz", "d", "b", "i"],
                       replace_where={"ts": ts})
    assert pl.read_delta(path)["v"].to_list() == [2.0]


def test_table_properties_read_the_description_and_configuration(tmp_path):
    path = str(tmp_path / "t")
    delta.write_polars(pa.table({"a": [1]}), path, properties={"source": "s.csv", "n": "1"})
    # Another engine sets a property as table configuration (TBLPROPERTIES): one more commit.
    meta = next(a for a in _commits(path) if "metaData" in a)["metaData"]
    meta["configuration"] = {"pipelines.properties.mapping": "{\"a\": \"A\"}", "pipelines.properties.n": "2",
                             "delta.appendOnly": "false"}
    Path(path, "_delta_log", f"{1:020d}.json").write_text(json.dumps({"metaData": meta}) + "\n")
    assert delta.table_properties(path) == {"source": "s.csv", "n": "1", "mapping": "{\"a\": \"A\"}"}


# --------------------------------------------------------------------------- across backends


def _frame(spark, start: int, n: int):
    return spark.range(start, start + n).select(
        F.col("id").alias("_row_id"),
        (F.col("id") % 3).cast("string").alias("g"),
        (F.col("id") * 0.5).alias("x"),
        F.when(F.col("id") % 4 == 0, None).otherwise(F.concat(F.lit("ü "), F.col("id").cast("string"))).alias("s"),
        F.timestamp_seconds(F.col("id") * 1000).alias("ts"),
    )


@pytest.mark.parametrize("partition_by", [[], ["g"]])
@pytest.mark.parametrize("first", ["delta-rs", "native"])
def test_a_table_crosses_backends(spark, tmp_path, native, use, first, partition_by):
    """Written on one backend; read, appended to, overwritten-where and time-travelled on the other."""
    other = "native" if first == "delta-rs" else "delta-rs"
    path = str(tmp_path / "t")
    use(first)
    # (native Delta commits the properties separately: the first version may be 1)
    first_version = delta.write_table(_frame(spark, 0, 50), path, mode="overwrite", partition_by=partition_by,
                                      properties={"k": "v"})
    assert first_version == delta.table_version(path)
    use(other)
    assert_df_equality(delta.read_table(spark, path), _frame(spark, 0, 50), ignore_row_order=True, ignore_nullable=True)
    assert delta.write_table(_frame(spark, 50, 30), path, mode="append", partition_by=partition_by) == first_version + 1
    if partition_by:
        delta.write_table(_frame(spark, 100, 9).where("g = '1'"), path, mode="overwrite", partition_by=partition_by,
                          replace_where={"g": "1"})
        expected = _frame(spark, 0, 80).where("g != '1'").unionByName(_frame(spark, 100, 9).where("g = '1'"))
    else:
        expected = _frame(spark, 0, 80)
    use(first)
    assert_df_equality(delta.read_table(spark, path), expected, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(delta.read_table(spark, path, version=first_version), _frame(spark, 0, 50),
                       ignore_row_order=True, ignore_nullable=True)
    assert delta.read_table(spark, path, version=first_version + 1).count() == 80
    assert delta.table_properties(path) == {"k": "v"}
    assert pl.read_delta(path).height == expected.count()


def test_spark_history_optimize_and_vacuum_on_a_delta_rs_table(spark, tmp_path, native, use):
    path = str(tmp_path / "t")
    use("delta-rs")
    for i in range(3):
        delta.write_table(_frame(spark, i * 20, 20), path, mode="append", partition_by=["g"])
    table = f"delta.`{path}`"
    history = spark.sql(f"DESCRIBE HISTORY {table}").orderBy("version").collect()
    assert [h["version"] for h in history] == [0, 1, 2]
    files_before = len(deltalake.DeltaTable(path).file_uris())
    spark.sql(f"OPTIMIZE {table}")
    assert len(deltalake.DeltaTable(path).file_uris()) == 3 < files_before  # one file per partition
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM {table} RETAIN 0 HOURS")
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    on_disk = {p.name for p in Path(path).rglob("*.parquet")}
    assert on_disk == {Path(u).name for u in deltalake.DeltaTable(path).file_uris()}
    # delta-rs still reads and appends after Spark rewrote the table.
    delta.write_table(_frame(spark, 60, 20), path, mode="append", partition_by=["g"])
    assert_df_equality(delta.read_table(spark, path), _frame(spark, 0, 80), ignore_row_order=True, ignore_nullable=True)
    assert math.isclose(pl.read_delta(path)["x"].sum(), sum(i * 0.5 for i in range(80)))


# --------------------------------------------------------------------------- backend selection


def test_a_callers_backend_survives_a_jobs_auto_config_and_a_config_choice_is_scoped(spark, tmp_path, use, monkeypatch,
                                                                                      capsys):
    from pipelines import runs

    monkeypatch.chdir(tmp_path)
    seen = []

    def job(config: str | None) -> None:
        parser = runs.JobArgumentParser(prog="probe")
        runs.add_config_flag(parser)
        argv = ["--config", config] if config else []
        assert runs.execute("cluster_eval", parser, argv, lambda s, cfg, run: seen.append(delta.backend(s))) == 0

    use("delta-rs")
    job(None)  # conf says "auto": the caller's choice stands
    (tmp_path / "native.yaml").write_text("delta:\n  backend: native\n")
    job(str(tmp_path / "native.yaml"))
    assert seen == ["delta-rs", "native"]
    assert delta.forced_backend() == "delta-rs", "the config's choice ends with the job"
    use("auto")
    assert delta.backend(spark) == ("native" if _has_native(spark) else "delta-rs")
    with pytest.raises(ValueError, match="Delta backend"):
        delta.set_backend("spark")
