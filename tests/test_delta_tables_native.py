"""Named tables on native Delta: ``--tables spark_catalog.pipelines_test`` writes every output
as ``<catalog>.<schema>.<stage>_<table>``; a second run resumes; history, time travel,
replace_where and properties work on names.

Spark's own Delta needs its jars on the JVM classpath when the JVM starts, so the tests
run in a child pytest process with a session of their own (local Maven repository jars,
Delta extension and catalog, a warehouse under tmp). In the suite's process only the
launcher runs. Skipped, with the reason, when the jars are absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stage_tables import OUTPUT_TABLES

M2 = Path.home() / ".m2" / "repository" / "io" / "delta"
DELTA_VERSION = "4.4.0"  # Maven Central serves 4.4.0 for Spark 4.2 (not the Python package's 4.4.1)
JARS = [
    M2 / "delta-spark_4.2_2.13" / DELTA_VERSION / f"delta-spark_4.2_2.13-{DELTA_VERSION}.jar",
    M2 / "delta-storage" / DELTA_VERSION / f"delta-storage-{DELTA_VERSION}.jar",
]
CHILD = os.environ.get("PIPELINES_NATIVE_DELTA_CHILD") == "1"
NAMESPACE = "spark_catalog.pipelines_test"
child_only = pytest.mark.skipif(not CHILD, reason="runs in the child process started by test_named_tables_in_a_native_delta_process")


def _missing_jars() -> list[str]:
    return [str(j) for j in JARS if not j.is_file()]


@pytest.mark.slow
@pytest.mark.skipif(CHILD, reason="the launcher does not run in its own child")
def test_named_tables_in_a_native_delta_process(tmp_path):
    if _missing_jars():
        pytest.skip(f"Delta jars not in the local Maven repository: {', '.join(_missing_jars())}")
    env = {**os.environ, "PIPELINES_NATIVE_DELTA_CHILD": "1", "PIPELINES_NATIVE_DELTA_TMP": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not test_named_tables_in_a_native_delta_process"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("2 passed") and "skipped" not in last, result.stdout[-2000:]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    from pyspark.sql import SparkSession

    from pipelines import delta

    assert SparkSession.getActiveSession() is None, "the child process must build the only session"
    root = Path(os.environ.get("PIPELINES_NATIVE_DELTA_TMP") or tmp_path_factory.mktemp("native"))
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("pipelines-native-delta-tests")
        # On the driver's own classpath: delta.backend() finds DeltaLog with Class.forName.
        .config("spark.driver.extraClassPath", os.pathsep.join(str(j) for j in JARS))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.databricks.delta.snapshotPartitions", "2")  # as conf/local.yaml: few tasks per log replay
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # the launcher shows the child's output tail
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    assert delta.backend(spark) == "native"
    spark.sql("CREATE SCHEMA IF NOT EXISTS pipelines_test")
    yield spark, root
    delta.use_tables(None, None)


def _expected_tables() -> dict[str, str]:
    return {f"{stage}_{table.lstrip('_')}": f"{stage}/{table}" for stage, tables in OUTPUT_TABLES.items() for table in tables}


def _pipeline(capsys, out: Path) -> list[dict]:
    from jobs.pipeline import main

    code = main(["--output", str(out), "--tables", NAMESPACE])
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0, f"{record['error']}\n{captured.err[-4000:]}"
    return record["stages"]


@child_only
def test_pipeline_writes_every_output_as_a_named_table_and_resumes(native, capsys):
    spark, root = native
    out = root / "pipeline"
    first = _pipeline(capsys, out)
    names = {t.name for t in spark.catalog.listTables("pipelines_test")}
    assert names == set(_expected_tables()), sorted(names)
    rows = {name: spark.table(f"{NAMESPACE}.{name}").count() for name in names}
    assert rows["ingest_bronze"] == rows["gmm_transform_transformed_values"] == rows["tokenize_tokens"] == 20_000
    assert rows["gmm_fit_models"] > 0 and rows["cluster_eval_metrics"] == 9  # k = 2..10
    # Files only under the path root: reports, plots, run records; no Delta table folders.
    assert not list(out.rglob("_delta_log")), list(out.rglob("_delta_log"))[:3]
    assert (out / "cluster_eval" / "report.md").is_file() and list((out / "_runs").glob("*.json"))
    assert json.loads((out / "cluster_eval" / "summary.json").read_text())["recommended_k"] == 4

    first_fits = [s["counts"] for s in first if s["job"] == "gmm_fit"]
    second = _pipeline(capsys, out)
    # The second run ingests day 1 again (a new bronze version), so day 1 fits every column
    # again and day 2 refits the drifted one, as the first run did: no model of another
    # version of the data is kept.
    assert [s["counts"] for s in second if s["job"] == "gmm_fit"] == first_fits
    assert first_fits[0]["to_fit"] == first_fits[0]["columns"] == 3 and first_fits[1]["to_fit"] == 1, first_fits
    status = {r["column"]: r for r in spark.table(f"{NAMESPACE}.gmm_fit_fit_status").collect()}
    assert {r["input_table"] for r in status.values()} == {f"{NAMESPACE}.ingest_bronze"}
    assert status["amount"]["reason"].startswith("input changed: fitted on version "), status["amount"]
    assert spark.table(f"{NAMESPACE}.ingest_bronze").count() == 20_000

    # gmm_fit on its own, on the table's name: day 2 only refitted the drifted column, so
    # the two fitted on day 1 are fitted on the latest version now; a second run resumes
    # from the named fit_status table (every column succeeded on this version).
    from jobs.gmm_fit import main

    def gmm_fit() -> dict:
        code = main(["--input", f"{NAMESPACE}.ingest_bronze", "--fit-dir", str(out / "gmm_fit"), "--tables", NAMESPACE,
                     "--columns", "amount,score,segment", "--categorical", "segment", "--mixed", "amount=0"])
        record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 0, record
        return record["counts"]

    assert gmm_fit() == {"columns": 3, "to_fit": 2, "already_succeeded": 1, "fitted": 2, "failed": 0}
    reasons = {r["column"]: r["reason"] for r in spark.table(f"{NAMESPACE}.gmm_fit_fit_status").collect()}
    assert all(reasons[c].startswith("input changed: fitted on version ") for c in ("amount", "segment")), reasons
    assert gmm_fit()["to_fit"] == 0


@child_only
def test_history_time_travel_replace_where_and_properties_on_a_named_table(native):
    from pipelines import delta

    spark, root = native
    delta.use_tables("spark_catalog", "pipelines_test", roots=[str(root / "stage")])
    target = str(root / "stage" / "scores")  # the path a stage builds; the table is stage_scores
    assert delta.table_target(target) == f"{NAMESPACE}.stage_scores"
    df = spark.createDataFrame([("a", 1.0), ("a", 2.0), ("b", 3.0)], "column string, value double")
    assert not delta.table_exists(target)
    assert delta.write_table(df, target, mode="overwrite", partition_by=["column"], properties={"fit_id": "r1"}) >= 0
    assert delta.table_exists(target) and delta.table_properties(target) == {"fit_id": "r1"}
    v1 = delta.write_table(spark.createDataFrame([("a", 9.0)], "column string, value double"), target,
                           mode="overwrite", partition_by=["column"], replace_where={"column": "a"})
    now = {(r["column"], r["value"]) for r in delta.read_table(spark, target).collect()}
    assert now == {("a", 9.0), ("b", 3.0)}  # only partition a replaced
    before = {(r["column"], r["value"]) for r in delta.read_table(spark, target, version=v1 - 1).collect()}
    assert before == {("a", 1.0), ("a", 2.0), ("b", 3.0)}
    history = delta.history(target)
    assert history[0]["version"] == delta.table_version(target) == v1 and isinstance(history[0]["timestamp"], int)
    assert [h["version"] for h in history] == sorted((h["version"] for h in history), reverse=True)
    # Polars readers (small tables: models, ledgers) and Arrow writers take the same target.
    assert delta.scan_table(target).collect().height == 2
    import polars as pl

    delta.write_polars(pl.DataFrame({"column": ["c"], "value": [4.0]}), target, mode="append", partition_by=["column"])
    assert spark.table(f"{NAMESPACE}.stage_scores").count() == 3
    assert set(delta.table_schema(target).names) == {"column", "value"}
    # A path outside the registered roots stays a path-based table.
    outside = str(root / "elsewhere" / "t")
    assert delta.table_target(outside) == outside
    delta.use_tables(None, None)
    assert delta.table_target(target) == target
