"""A real cluster: ``local-cluster[2,1,1024]`` starts a standalone master, two workers and two
executor JVMs with their own Python workers on this machine.

1. The whole pipeline on the demo data gives, table for table, the rows of a ``local[2]``
   run (same inputs, same seed).
2. Killing one executor JVM (SIGKILL, found by pid under the job's driver) mid-pass:
   the job completes through Spark's task retry, its outputs equal an undisturbed run's,
   and the Delta log commits only files that are whole and on disk.
"""

from __future__ import annotations

import os
import random
import signal
from functools import partial
from pathlib import Path

import polars as pl
import pytest
from harness import (
    CLUSTER,
    LOCAL,
    Job,
    assert_same_tables,
    check_committed_files,
    commands,
    delta_tables,
    event_log_conf,
    executor_running_a_task,
    failed_tasks,
    figure,
    ui_conf,
    wait_for_next_spark_job,
)

from pipelines import delta

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Tiny input splits, so a pass is many tasks over both executors and a kill lands mid-pass.
SPLITS = {"spark.sql.files.maxPartitionBytes": "8k", "spark.sql.files.openCostInBytes": "8k"}


def test_pipeline_on_local_cluster_equals_local(spark, work):
    cfg = work / "pipeline_small.yaml"
    cfg.write_text("cluster_eval:\n  k_min: 2\n  k_max: 5\n  silhouette_sample: 2000\n")
    jobs = {}
    for master in (CLUSTER, LOCAL):
        name = "cluster" if master == CLUSTER else "local"
        cwd = work / f"cwd_{name}"
        cwd.mkdir()
        jobs[master] = (Job("pipeline", "--output", work / f"pipeline_{name}", "--config", cfg, master=master, cwd=cwd),
                        work / f"pipeline_{name}", cwd)
    results = {m: (j.finish(), out, cwd) for m, (j, out, cwd) in jobs.items()}
    for master, (res, _, cwd) in results.items():
        assert res.code == 0, (master, res.stdout[-5:], res.job_lines()[-5:])
        # stdout is the JSON summary alone; progress went to stderr (through the JVM under spark-submit)
        assert len(res.stdout) == 1 and res.record["status"] == "succeeded", res.stdout[:5]
        # stage 5 of 9: the day-2 drift demo adds four stages after tokenize
        assert any(line.startswith("[pipeline] stage 5/") and line.endswith(": tokenize") for line in res.stderr)
        assert list(cwd.iterdir()) == [], f"files written relative to the working directory: {list(cwd.iterdir())}"
    spark_info = results[CLUSTER][0].record["spark"]
    assert spark_info["master"] == CLUSTER and spark_info["executors"] == 2
    assert all(n > 0 for n in spark_info["executor_tasks"].values()), spark_info
    n = assert_same_tables(spark, results[CLUSTER][1], results[LOCAL][1], section="cluster runs equal to local[2] runs",
                           label="pipeline (demo data, 20,000 rows)")
    assert n >= 10


@pytest.fixture(scope="module")
def split_input(spark, work, bronze):
    """The bronze rows in 12 committed files (12 appends), and a fit of it."""
    from jobs.gmm_fit import main as gmm_fit

    path = work / "bronze_split"
    frame = pl.read_delta(str(bronze))
    for i, part in enumerate(frame.iter_slices(n_rows=-(-frame.height // 12))):
        delta.write_polars(part, str(path), mode="overwrite" if i == 0 else "append")
    assert len(delta._open(str(path)).file_uris()) == 12
    assert gmm_fit([str(a) for a in commands(path, work / "split")["gmm_fit"]]) == 0
    return path


def _task_writing(root: Path) -> bool:
    """Whether an executor task has its output file open under ``root`` (Spark's ``_temporary``
    attempt folder)."""
    return any("_temporary" in p.parts for p in root.rglob("*.parquet"))


# A kill can miss: the status store shows a task running a few milliseconds after it ended, and
# tokenize's mid-write point is a handful of short tasks. An attempt whose kill found no task
# running is checked as fully as the others (the job succeeds, its outputs equal the
# undisturbed run's) and then run again, with a new kill, up to this many times.
KILL_ATTEMPTS = 3


@pytest.mark.parametrize("job_name", ["gmm_transform", "tokenize", "cluster_eval"])
def test_lost_executor_mid_pass(spark, work, split_input, job_name):
    rng = random.Random(f"executor-kill-{job_name}")

    def job_args(root: Path) -> list:
        args = commands(split_input, root)[job_name]
        if job_name == "gmm_transform":  # both runs use the fit made on the split input
            args[args.index("--fit-dir") + 1] = work / "split" / "gmm_fit"
        # cluster_eval: a summary smaller than the input, so the Lloyd passes run on the executors
        # (at most 3 of them: the kill lands in the first)
        if job_name == "cluster_eval":
            args += ["--summary-rows", "500", "--max-iter", "3"]
        return args

    # cluster_eval: mid-sweep, the first Lloyd pass over the prepared data on the executors;
    # gmm_transform: the engine's pass, its tasks reading units and writing their files.
    # The line comes just before the pass's Spark job; the kill waits for that job's start.
    # tokenize: mid-write, a task of Spark's writer has its output file open.
    start = {"cluster_eval": r"^\[cluster_eval\] pass 1 of at most",
             "gmm_transform": r"^\[gmm_transform\] \d+ fitted column\(s\)"}.get(job_name)
    ref_root = work / f"exec_ref_{job_name}"
    reference = Job(job_name, *job_args(ref_root), master=CLUSTER, conf=SPLITS)  # once, beside the first attempt
    for attempt in range(1, KILL_ATTEMPTS + 1):
        out_root = work / f"exec_kill_{job_name}_{attempt}"
        events = work / f"events_{job_name}_{attempt}"
        ui = ui_conf()
        disturbed = Job(job_name, *job_args(out_root), master=CLUSTER, conf={**SPLITS, **event_log_conf(events), **ui})
        if start is not None:
            hit = disturbed.wait_for(start) is not None and wait_for_next_spark_job(events, disturbed)
            assert hit, f"{job_name} ended before the kill point"
        when = partial(_task_writing, out_root) if start is None else (lambda: True)
        # the victim: an executor the driver's status store shows running a task at this moment
        victim = executor_running_a_task(disturbed, ui, rng, when=when)
        assert victim is not None, f"{job_name} ended before a task ran on an executor"
        assert len(disturbed.executors()) == 2, disturbed.executors()
        os.kill(victim.pid, signal.SIGKILL)
        res = disturbed.finish()
        if attempt == 1:
            ref = reference.finish()
            assert ref.code == 0, ref.job_lines()[-5:]
        assert res.code == 0, (attempt, res.job_lines()[-5:])
        record = res.record
        assert record["status"] == "succeeded"
        committed = [check_committed_files(t) for t in delta_tables(out_root)]
        assert_same_tables(spark, out_root, ref_root, section="lost executor: outputs equal an undisturbed run",
                           label=f"{job_name} (attempt {attempt})")
        failed = failed_tasks(events)
        # the driver saw the executor go
        assert failed.get("executors_removed", 0) >= 1, failed
        if failed.get("ExecutorLostFailure", 0) >= 1:
            break  # and lost the task it was running, which it ran again (the job succeeded)
    # one attempt's kill landed on a running task
    assert failed.get("ExecutorLostFailure", 0) >= 1, (attempt, failed)
    figure("executor kills", job=job_name, attempts=attempt, killed_pid=victim.pid,
           lost_tasks=failed.get("ExecutorLostFailure", 0),
           other_failed_tasks=sum(n for r, n in failed.items() if r not in ("ExecutorLostFailure", "executors_removed")),
           executors_seen=record["spark"]["executors"], tables_checked=len(committed),
           committed_files=sum(c["files"] for c in committed), stray_files=sum(c["stray"] for c in committed),
           survived="yes")
