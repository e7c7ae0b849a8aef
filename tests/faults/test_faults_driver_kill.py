"""A killed driver, at several points of every job, then the same command again.

Every job, and ``jobs/pipeline.py`` (the five stages in one session, on the same source).
The kill points are progress lines of an undisturbed run of the same command, chosen with
a seeded generator (plus a seeded delay of up to 0.2 s after the line): during the read,
mid-pass, between stages, just before and after a commit. The whole process group gets
SIGKILL (driver, JVM, Python workers). The runs are chained: each killed run starts from
what the previous one left, and the last run is let finish. After every kill:

- every table's log commits only whole files that are on disk;
- no table shows a partial commit: each table (each ``column``/``k`` partition of a
  partitioned one) holds either its rows from before the run or the undisturbed run's;
- the killed run's record in ``_runs/`` says ``running``, and no new record of the job says
  ``succeeded`` (``jobs/pipeline.py``: its own record; the stages it finished recorded so, truly).

The finishing run exits 0 and every table equals the undisturbed run's; ``w-<uuid>/``
folders a killed writer left (once older than the safe age) are removed by that write.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import deltalake
import polars as pl
import pytest
from harness import (
    Job,
    assert_same_tables,
    check_committed_files,
    delta_tables,
    figure,
    frames_by_partition,
    line_pattern,
    run_records,
)

from pipelines import delta

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

POINTS = 3
HOUR = 3600


def _orphans(root: Path) -> list[Path]:
    """``w-<uuid>/`` folders of tables under ``root`` that no commit in their log references."""
    out = []
    for table in delta_tables(root):
        referenced = set()
        for log in (table / "_delta_log").glob("*.json"):
            for line in log.read_text().splitlines():
                add = json.loads(line).get("add") if line.strip() else None
                if add:
                    referenced.add(add["path"].split("/")[0])
        out += [p for p in table.glob("w-*") if p.is_dir() and p.name not in referenced]
    return out


def _age(folder: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (old, old))


@pytest.mark.parametrize("job_name", ["ingest", "cluster_eval", "gmm_fit", "gmm_transform", "tokenize", "pipeline"])
def test_killed_driver_then_rerun(spark, work, reference, job_name):
    rng = random.Random(f"driver-kill-{job_name}")
    ref_root, out_root = reference["root"], work / "driver_kill"
    args = [str(a).replace(str(ref_root), str(out_root)) for a in reference["args"][job_name]]
    if job_name == "gmm_transform":  # transform with the undisturbed fit
        args[args.index("--fit-dir") + 1] = str(ref_root / "gmm_fit")
    lines = reference["lines"](job_name)
    target, want_root = out_root / job_name, ref_root / job_name
    want = {str(t.relative_to(want_root)): frames_by_partition(t) for t in delta_tables(want_root)}
    points = sorted(rng.sample(range(len(lines)), min(POINTS, len(lines))))
    survived = 0
    for i in points:
        before = {str(t.relative_to(target)): frames_by_partition(t) for t in delta_tables(target)}
        known = set(run_records(target))
        job = Job(job_name, *args)
        # None: the run resumed past this point (e.g. gmm_fit skips the columns fitted before) and ended
        if job.wait_for(line_pattern(lines[i])) is not None:
            time.sleep(rng.uniform(0.0, 0.2))  # the seeded part of the kill point
        landed = job.proc.poll() is None and not job.stdout  # still running, no summary printed yet
        job.kill()
        for table in delta_tables(target):
            rel = str(table.relative_to(target))
            check_committed_files(table)
            if table.name == "fit_status":  # a status table: "running" rows are its point
                continue
            for key, frame in frames_by_partition(table).items():
                old, new = before.get(rel, {}).get(key), want.get(rel, {}).get(key)
                assert (old is not None and frame.equals(old)) or (new is not None and frame.equals(new)), (
                    f"{rel} partition {key}: neither the rows before the run nor the finished run's")
        new_records = {rid: r for rid, r in run_records(target).items() if rid not in known and r["job"] == job_name}
        statuses = [r["status"] for r in new_records.values()]
        # killed between writing its record and printing it: the run had finished, its record is true
        landed = landed and not job.stdout and statuses != ["succeeded"]
        if landed:
            assert statuses == ["running"], new_records
            survived += 1
        else:
            assert job.proc.returncode == 0 or job.stdout, job.stderr[-5:]
        figure("driver kill points", job=job_name, after_line=lines[i][:70],
               killed="mid-run" if landed else "no: the run had ended", tables=len(delta_tables(target)),
               killed_run_record=",".join(statuses), invariants="held")
    orphans = _orphans(target)
    for folder in orphans:  # what a killed writer left, made older than the safe age
        _age(folder, 2 * HOUR)
    res = Job(job_name, *args).finish()
    assert res.code == 0, res.job_lines()[-5:]
    assert res.record["status"] == "succeeded"
    assert not [p for p in orphans if p.exists()], "unreferenced w-<uuid>/ folders older than the safe age remain"
    ignore: frozenset[str] = frozenset()
    if job_name == "pipeline":
        # every run re-ingests, so the killed runs' commits put the bronze table at a later version
        # than the undisturbed run's: the fits must name their own run's bronze version
        for root in (target, want_root):
            bronze = deltalake.DeltaTable(str(root / "ingest" / "bronze")).version()
            fitted = pl.read_delta(str(root / "gmm_fit" / "fit_status"))["input_version"].unique().to_list()
            assert fitted == [bronze], (root, fitted, bronze)
        ignore = frozenset({"input_version"})
    assert_same_tables(spark, target, want_root, section="driver kills: re-run equals the undisturbed run",
                       label=job_name, ignore=ignore)
    for table in delta_tables(target):
        check_committed_files(table)
        assert delta.table_exists(str(table))
    figure("driver kills per job", job=job_name, points_tried=len(points), killed_mid_run=survived, survived=survived,
           orphan_folders_left=len(orphans), orphans_removed=sum(not p.exists() for p in orphans),
           rerun="succeeded, tables equal")
