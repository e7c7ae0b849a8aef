"""One local SparkSession for the whole test run.

It reuses an active session when there is one (as on Databricks), otherwise builds
local[2] with 2 shuffle partitions, UTC and the UI off, on Spark's native Delta when the
Delta jars were fetched (``make test`` does; ``PIPELINES_DELTA_JARS=none`` runs without
them, on delta-rs). With ``PIPELINES_SPARK_CONNECT=1`` the session is a local Spark
Connect one (``remote("local[2]")``), as on Databricks serverless. It is never stopped:
stopping and restarting a JVM per test is the slowest thing a Spark test suite can do.
"""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

CONNECT = os.environ.get("PIPELINES_SPARK_CONNECT") == "1"


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    from pipelines.spark import delta_conf

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    builder = SparkSession.builder.remote("local[2]") if CONNECT else SparkSession.builder.master("local[2]")
    conf = {
        "spark.app.name": "pipelines-tests",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.memory": "2g",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.log.level": "ERROR",
        **delta_conf(None),
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    yield builder.getOrCreate()
