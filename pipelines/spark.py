"""The SparkSession.

:func:`get_spark` returns the active session when there is one (Databricks, a
notebook, Spark Connect). Otherwise it builds one, and who decides its settings
depends on how the driver was started:

- **under ``spark-submit``** (or with ``PYSPARK_SUBMIT_ARGS``), the JVM already carries
  the submitted ``--master`` and ``--conf``: they win, and ``conf/local.yaml`` only fills
  in keys that nobody set;
- **as plain ``python``** (or from pytest with no session), the session is built from
  the ``spark`` section of the config (``conf/local.yaml``: ``local[*]``, UI off, ...).

Either way :data:`REQUIRED_CONF` is applied, because the project's outputs depend on it,
and where the Delta jars are present (``make`` fetches them into ``.jars/delta/``, see
:func:`delta_conf`) the session gets Spark's native Delta. No module here holds a session
at import time.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import SparkSettings

# Settings every session built here gets, whatever the config or spark-submit says:
REQUIRED_CONF = {
    # Delta and Databricks read INT96 poorly; Parquet files carry plain microseconds.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Timestamps (ingest's _ingested_at, time-travel, run records) mean the same on every machine.
    "spark.sql.session.timeZone": "UTC",
}

# What turns a session with the Delta jars on its classpath into a native-Delta one.
DELTA_EXTENSION_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
_DELTA_JARS_ENV = "PIPELINES_DELTA_JARS"


def delta_jars() -> list[str]:
    """The Delta jar files for local sessions, or ``[]`` when they were not fetched.

    They live in ``$PIPELINES_DELTA_JARS`` if set, else in the checkout's ``.jars/delta/``
    (``scripts/fetch_delta_jars.sh``, run by ``make run`` / ``make test``).
    """
    folder = Path(os.environ.get(_DELTA_JARS_ENV) or Path(__file__).resolve().parents[1] / ".jars" / "delta")
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    return jars if any(Path(j).name.startswith("delta-spark_") for j in jars) else []


def delta_conf(submitted: dict[str, str] | None) -> dict[str, str]:
    """The conf that gives a new session Spark's native Delta, or ``{}`` where it cannot.

    For a session started here: the fetched jars (:func:`delta_jars`, as ``spark.jars``
    file paths, so nothing is resolved or downloaded at start-up) and
    :data:`DELTA_EXTENSION_CONF`. Under ``spark-submit`` the JVM's classpath is fixed, so
    only the extension and catalog, and only when the submission brought Delta
    (``--jars`` or ``--packages``).
    """
    if submitted is None:
        jars = delta_jars()
        return {"spark.jars": ",".join(jars), **DELTA_EXTENSION_CONF} if jars else {}
    brought = submitted.get("spark.jars", "") + "," + submitted.get("spark.jars.packages", "")
    return dict(DELTA_EXTENSION_CONF) if ("delta-spark" in brought or "io.delta:" in brought) else {}


def submitted_conf() -> dict[str, str] | None:
    """The conf that ``spark-submit`` (or ``PYSPARK_SUBMIT_ARGS``) gave this driver.

    ``spark-submit`` starts the JVM before Python and hands it over through
    ``PYSPARK_GATEWAY_PORT``; its ``--master`` and ``--conf`` are then the JVM's system
    properties. Returns ``None`` for a plain ``python`` run, where nothing was submitted.
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ and "PYSPARK_SUBMIT_ARGS" not in os.environ:
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM (or starts one with the args)
    return dict(SparkConf().getAll())


def session_conf(settings: SparkSettings, submitted: dict[str, str] | None) -> dict[str, str]:
    """The conf to build a session with: ``settings`` (and :func:`delta_conf`) for every key
    not in ``submitted``, then :data:`REQUIRED_CONF` over both."""
    defaults = {
        "spark.master": settings.master,
        "spark.app.name": settings.app_name,
        **delta_conf(submitted),
        **settings.conf,
    }
    conf = {key: str(value) for key, value in defaults.items() if key not in (submitted or {})}
    return {**conf, **REQUIRED_CONF}


def get_spark(settings: SparkSettings | None = None) -> SparkSession:
    """Return the active SparkSession, or build one.

    Parameters
    ----------
    settings : SparkSettings, optional
        The ``spark`` config section (master, app name, extra conf). Defaults to the
        packaged ``conf/local.yaml``. Under ``spark-submit`` it supplies only the keys
        the submission did not set; an active session is returned as it is.

    Returns
    -------
    SparkSession
    """
    from pyspark.sql import SparkSession

    from pipelines.config import load_config

    active = SparkSession.getActiveSession()
    if active is not None:
        server = _local_connect_server()
        if server is not None:  # a local Connect server runs in this process: quiet it as we would ours
            server.setLogLevel((settings or load_config(None).spark).log_level)
        return active

    if settings is None:
        settings = load_config(None).spark

    # Python workers must run this interpreter (the venv's), or they cannot import
    # pyarrow/polars. setdefault: an explicit PYSPARK_PYTHON from the user wins.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder
    for key, value in session_conf(settings, submitted_conf()).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    # Progress goes to stderr as our own lines; Spark's INFO chatter would bury them.
    context = _local_connect_server() if is_connect(session) else session.sparkContext
    if context is not None:
        context.setLogLevel(settings.log_level)
    return session


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (no SparkContext or JVM on the client)."""
    return getattr(spark, "_jvm", None) is None


def run_side_by_side(spark: SparkSession, calls: list[tuple[Any, tuple, dict]]) -> list[Any]:
    """Run independent Spark actions ``fn(*args, **kw)`` in threads; their results in order.

    Each thread makes ``spark`` its JVM thread's active session first: a session-scoped
    lookup (a registered Python data source, e.g. the delta-rs sink) finds only the
    active session's, and a new thread has none. Spark Connect sessions need nothing.
    The first failure is raised once every call has ended.
    """
    from concurrent.futures import ThreadPoolExecutor

    def call(fn, args, kw):
        if not is_connect(spark):
            spark._jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
        return fn(*args, **kw)

    with ThreadPoolExecutor(max_workers=max(1, len(calls)), thread_name_prefix="spark-side-by-side") as pool:
        futures = [pool.submit(call, fn, args, kw) for fn, args, kw in calls]
    return [f.result() for f in futures]


def _local_connect_server():
    """The SparkContext behind a local Spark Connect session (``remote("local[2]")`` runs its
    server inside this process), else ``None``."""
    from pyspark import SparkContext

    if os.environ.get("SPARK_LOCAL_REMOTE") != "1":
        return None
    return SparkContext._active_spark_context


@contextmanager
def session(settings: SparkSettings | None = None) -> Iterator[SparkSession]:
    """:func:`get_spark` for one job: a session built here is stopped at the end.

    Stopping lets a cluster manager (standalone, ``local-cluster``, YARN) release the
    executors in order instead of seeing them die with the driver. A session that was
    already active (Databricks, a notebook, the test suite) is left running.
    """
    from pyspark.sql import SparkSession

    owned = SparkSession.getActiveSession() is None
    spark = get_spark(settings)
    warm_up = _warm_up(spark) if owned else None
    try:
        yield spark
    finally:
        if owned:
            if warm_up is not None:  # a run that ended first (bad input) stops no job under it
                warm_up.join(timeout=60)
            spark.stop()


def _warm_up(spark: SparkSession) -> threading.Thread | None:
    """Start a trivial Spark job in the background on a new local session.

    A local JVM's first Spark job costs about 2.5 s whatever it does (scheduler,
    executor and code-generation warm-up; measured with ``spark.range(1).collect()``),
    and a job on small data spends a good part of its time there. Run in the background
    as soon as the session is up, it overlaps the job's own driver-side work before its
    first Spark job (imports, Delta log reads, schema inference on a sample); the job's
    results do not depend on it. Only for ``local`` masters: a cluster's session is
    usually a warm one, and the fault tests count a ``local-cluster`` run's Spark jobs.
    """
    master = spark.sparkContext.master if not is_connect(spark) else ""
    if not (master == "local" or master.startswith("local[")):
        return None

    def run() -> None:
        try:
            spark.range(1).collect()
        except Exception:  # noqa: BLE001 (a warm-up that fails changes nothing; the job reports its own errors)
            pass

    thread = threading.Thread(target=run, name="spark-warm-up", daemon=True)
    thread.start()
    return thread


def describe(spark: SparkSession) -> dict[str, Any]:
    """Where a session runs: master, default parallelism and executors (for the run record).

    ``executors`` counts executor processes other than the driver (0 in ``local`` mode,
    where tasks run inside the driver's JVM); ``executor_tasks`` maps each one to the tasks
    it has run. On Spark Connect only the master is visible to the client.
    """
    info: dict[str, Any] = {"master": spark.conf.get("spark.master", None)}
    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect: no SparkContext on the client
        return {**info, "connect": True}
    info["default_parallelism"] = sc.defaultParallelism
    info["shuffle_partitions"] = int(spark.conf.get("spark.sql.shuffle.partitions"))
    try:  # the JVM's status store; shared-access Databricks clusters may refuse it
        store = sc._jsc.sc().statusStore().executorList(True)
        tasks = {}
        for i in range(store.size()):
            summary = store.apply(i)
            if summary.id() != "driver":
                tasks[summary.id()] = summary.totalTasks()
    except Exception:
        return info
    return {**info, "executors": len(tasks), "executor_tasks": tasks}
