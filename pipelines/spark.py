"""The SparkSession.

:func:`get_spark` returns the active session when there is one (Databricks,
``spark-submit``, a notebook) and only otherwise builds a local session from the
``spark`` section of the config (``conf/local.yaml``). It never sets ``master`` on a
session that already exists. No module here holds a session at import time.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import SparkSettings

# Settings every session built here gets, whatever the config says.
_REQUIRED_CONF = {
    # Delta and Databricks read INT96 poorly; write timestamps as plain microseconds.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
}


def get_spark(settings: SparkSettings | None = None) -> SparkSession:
    """Return the active SparkSession, or build a local one.

    Parameters
    ----------
    settings : SparkSettings, optional
        The ``spark`` config section (master, app name, extra conf). Used only when no
        session is active; defaults to the packaged ``conf/local.yaml``.

    Returns
    -------
    SparkSession
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    if settings is None:
        from pipelines.config import load_config

        settings = load_config(None).spark

    # Python workers must run this interpreter (the venv's), or they cannot import
    # pyarrow/polars. setdefault: an explicit PYSPARK_PYTHON from the user wins.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder.appName(settings.app_name).master(settings.master)
    for key, value in {**settings.conf, **_REQUIRED_CONF}.items():
        builder = builder.config(key, str(value))
    session = builder.getOrCreate()
    # Progress goes to stderr as our own lines; Spark's INFO chatter would bury them.
    session.sparkContext.setLogLevel(settings.log_level)
    return session
