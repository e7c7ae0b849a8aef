"""One local SparkSession for the whole test run.

It reuses an active session when there is one (as on Databricks), otherwise builds
local[2] with 2 shuffle partitions, UTC and the UI off, on Spark's native Delta when the
Delta jars were fetched (``make test`` does; ``PIPELINES_DELTA_JARS=none`` runs without
them, on delta-rs). With ``PIPELINES_SPARK_CONNECT=1`` the session is a local Spark
Connect one (``remote("local[2]")``, its server on a free port: see :func:`_local_connect`),
as on Databricks serverless. It is never stopped:
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
    conf = {
        "spark.app.name": "pipelines-tests",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.databricks.delta.snapshotPartitions": "2",  # native Delta's log replay, as conf/local.yaml
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.memory": "2g",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.log.level": "ERROR",
        **delta_conf(None),
    }
    if CONNECT:
        yield _local_connect(conf)
        return
    builder = SparkSession.builder.master("local[2]")
    for key, value in conf.items():
        builder = builder.config(key, value)
    yield builder.getOrCreate()


def _local_connect(conf: dict[str, str]):
    """A local Spark Connect session, as ``remote("local[2]")`` builds it, but on a free port.

    ``remote("local[2]")`` starts the server in this process and then connects to
    ``sc://localhost``, i.e. port 15002, whoever listens there: with a second Connect
    server on the machine (another checkout's test run, a notebook), the tests would run on
    that one's JVM, or this server would fail to bind. So the server binds a free port
    (``spark.connect.grpc.binding.port``) and the client connects to exactly that port.
    The server is started the way pyspark's local mode does it (``_start_connect_server``:
    a classic session with the Connect plugin, in this process); every setting goes on the
    server's SparkConf, so the client needs none (passing the static ones would only warn
    ``CANNOT_MODIFY_CONFIG``). ``SPARK_LOCAL_REMOTE`` marks the session local, as pyspark
    does, and ``pipelines.spark`` reaches the server's SparkContext through it.
    """
    import socket

    from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    RemoteSparkSession._start_connect_server("local[2]", {**conf, "spark.connect.grpc.binding.port": str(port)})
    os.environ["SPARK_LOCAL_REMOTE"] = "1"
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    return RemoteSparkSession.builder.remote(f"sc://localhost:{port}").getOrCreate()
