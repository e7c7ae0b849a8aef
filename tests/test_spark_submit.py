"""Who decides the session: spark-submit's --master / --conf, or conf/local.yaml.

Each case runs a real job in a subprocess (its own JVM), so the shared test session
cannot hide what the job's own ``get_spark`` did. The run record's ``spark`` entry
says where the job ran.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pipelines.spark import session_conf

REPO = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")


def _env() -> dict[str, str]:
    # The executors' Python workers must import this checkout's package and run this venv.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": path}


def _ingest(tmp_path: Path, launcher: list[str], files: int = 1) -> dict:
    """Ingest 200 rows from ``files`` CSV files (a folder when more than one)."""
    import subprocess

    source = tmp_path / "in"
    source.mkdir()
    for f in range(files):
        rows = range(f * 200 // files, (f + 1) * 200 // files)
        (source / f"part-{f}.csv").write_text("id,amount\n" + "".join(f"{i},{i * 0.5}\n" for i in rows))
    if files == 1:
        source = source / "part-0.csv"
    out = tmp_path / "out"
    cmd = [*launcher, str(REPO / "jobs" / "ingest.py"), "--source", str(source), "--format", "csv", "--output", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["status"] == "succeeded"
    assert record["counts"]["rows_written"] == 200
    # The record on disk is the one printed.
    on_disk = json.loads((out / "_runs" / f"{record['run_id']}.json").read_text())
    assert on_disk["spark"] == record["spark"]
    return record["spark"]


@pytest.mark.slow
def test_spark_submit_local_cluster_master_and_conf_win(tmp_path):
    # The scheduler waits until both executors have registered (spark.cores.max gives it the
    # number of cores to expect), and the source is four files (ingest gives each file its own
    # task), so the read stage's first round of offers hands one task to each one-core
    # executor. A one-file source makes every stage one task, and six one-task stages all
    # land on one executor once in 32 runs (CI saw it twice).
    spark = _ingest(tmp_path, [str(SPARK_SUBMIT), "--master", "local-cluster[2,1,1024]",
                               "--conf", "spark.sql.shuffle.partitions=3",
                               "--conf", "spark.cores.max=2",
                               "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
                               "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=300s"],
                    files=4)
    assert spark["master"] == "local-cluster[2,1,1024]"
    assert spark["shuffle_partitions"] == 3
    assert spark["executors"] == 2
    # Both executor processes really ran the job's tasks (not the driver).
    assert len(spark["executor_tasks"]) == 2 and all(n > 0 for n in spark["executor_tasks"].values())


@pytest.mark.slow
def test_spark_submit_local_one_core(tmp_path):
    spark = _ingest(tmp_path, [str(SPARK_SUBMIT), "--master", "local[1]"])
    assert spark["master"] == "local[1]"
    assert spark["default_parallelism"] == 1
    assert spark["executors"] == 0  # local mode: tasks run inside the driver
    # local.yaml still fills in what the submission did not set.
    assert spark["shuffle_partitions"] == 8


@pytest.mark.slow
def test_plain_python_uses_local_yaml(tmp_path):
    from pipelines.config import load_config

    local = load_config(None).spark
    spark = _ingest(tmp_path, [sys.executable])
    assert spark["master"] == local.master == "local[*]"
    assert spark["default_parallelism"] == os.cpu_count()
    assert spark["shuffle_partitions"] == int(local.conf["spark.sql.shuffle.partitions"])


def test_session_conf_submitted_keys_win_and_required_keys_are_forced():
    from pipelines.config import SparkSettings

    settings = SparkSettings(master="local[*]", app_name="pipelines",
                             conf={"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false",
                                   "spark.sql.session.timeZone": "Europe/Paris"})
    submitted = {"spark.master": "yarn", "spark.sql.shuffle.partitions": "400",
                 "spark.sql.parquet.outputTimestampType": "INT96"}
    conf = session_conf(settings, submitted)
    assert "spark.master" not in conf and "spark.sql.shuffle.partitions" not in conf  # left to spark-submit
    assert conf["spark.ui.enabled"] == "false" and conf["spark.app.name"] == "pipelines"  # defaults fill in
    assert conf["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"  # forced over the submission
    assert conf["spark.sql.session.timeZone"] == "UTC"  # forced over the config
    # No submission: the config decides everything but the forced keys.
    plain = session_conf(settings, None)
    assert plain["spark.master"] == "local[*]" and plain["spark.sql.shuffle.partitions"] == "8"
