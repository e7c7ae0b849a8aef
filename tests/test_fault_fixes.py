"""Small fixes the fault suite (tests/faults) asked for, checked on their own: orphan
``w-<uuid>/`` folders, the fit_dir lock, and Delta commit conflicts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipelines import delta, fs
from pipelines.errors import ConflictError


def _age(path, seconds):
    old = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (old, old))


def test_next_write_removes_old_unreferenced_folders_only(spark, tmp_path):
    if delta.backend(spark) != "delta-rs":
        pytest.skip("w-<id> writer folders are the delta-rs path's layout; native Delta writes none, "
                    "and what a killed Spark writer leaves is VACUUM's to remove")
    path = tmp_path / "t"
    delta.write_table(spark.range(10).selectExpr("id AS _row_id"), str(path), mode="overwrite")
    first = {p.name for p in path.glob("w-*")}
    killed, running = path / "w-killed", path / "w-running"
    for folder in (killed, running):  # what a killed writer and a still-running one leave
        (folder / "_temporary").mkdir(parents=True)
        (folder / "_temporary" / "part-0.parquet").write_bytes(b"partial")
    _age(killed, 2 * 3600)
    for p in path.glob("w-*"):
        if p.name in first:
            _age(p, 2 * 3600)  # committed long ago: time travel still needs it
    delta.write_table(spark.range(5).selectExpr("id AS _row_id"), str(path), mode="overwrite")
    names = {p.name for p in path.glob("w-*")}
    assert "w-killed" not in names and "w-running" in names and first <= names
    assert delta.read_table(spark, str(path), version=0).count() == 10
    assert delta.read_table(spark, str(path)).count() == 5


def test_fit_dir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / "fit" / "_lock"
    with fs.exclusive(str(lock), owner="run-a"):
        assert json.loads(lock.read_text())["owner"] == "run-a"
        with pytest.raises(ConflictError, match="held by run run-a"):
            with fs.exclusive(str(lock), owner="run-b"):
                pass
    assert not lock.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"owner": "killed", "host": socket.gethostname(), "pid": dead.pid, "since": "x"}))
    with fs.exclusive(str(lock), owner="run-c"):
        assert json.loads(lock.read_text())["owner"] == "run-c"
    # a lock file created an instant ago, its record not yet written (two runs racing for it)
    lock.write_text("")
    with pytest.raises(ConflictError, match="another run is taking the lock"):
        with fs.exclusive(str(lock), owner="run-d"):
            pass


def test_a_lost_commit_race_is_a_conflict_and_leaves_no_files(tmp_path, monkeypatch):
    import polars as pl
    from deltalake import DeltaTable

    path = tmp_path / "t"
    delta.write_polars(pl.DataFrame({"column": ["a"], "v": [1.0]}), str(path), mode="overwrite", partition_by=["column"])
    real = DeltaTable.create_write_transaction
    raced = []

    def racing(self, *args, **kwargs):  # another writer commits between our read and our commit
        if raced:
            return real(self, *args, **kwargs)
        raced.append(True)
        delta.write_polars(pl.DataFrame({"column": ["a"], "v": [2.0]}), str(path), mode="overwrite",
                           partition_by=["column"], replace_where={"column": "a"})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", racing)
    before = set(path.rglob("*.parquet"))
    try:
        delta.write_polars(pl.DataFrame({"column": ["a"], "v": [3.0]}), str(path), mode="overwrite",
                           partition_by=["column"], replace_where={"column": "a"})
    except ConflictError as exc:
        assert str(path) in str(exc) and "concurrent write" in str(exc)
        monkeypatch.setattr(DeltaTable, "create_write_transaction", real)
        committed = {p.removeprefix("file://") for p in DeltaTable(str(path)).file_uris()}
        assert {str(p) for p in set(path.rglob("*.parquet")) - before} == committed
    else:  # delta-rs found no conflict: the later commit simply won
        assert pl.read_delta(str(path))["v"].to_list() == [3.0]
