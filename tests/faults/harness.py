"""Drive the jobs as a user does: ``spark-submit`` subprocesses, their progress lines, kills.

Every job started here runs in its own session (process group), so one ``killpg`` ends
the driver, its JVM, a ``local-cluster``'s executor JVMs and their Python workers;
:func:`kill_all` ends whatever a test left running, by process group id.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deltalake
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")
CLUSTER = "local-cluster[2,1,1024]"
LOCAL = "local[2]"
ROWS = 3000  # the demo source at CI size: every job's main path in seconds, still thousands of rows
TIMEOUT = 1200  # seconds a job may take on a loaded 2-core CI machine

# Figures the suite reports (section -> rows), printed and written at the end of the session.
FIGURES: dict[str, list[dict[str, Any]]] = defaultdict(list)
_STARTED: list[Job] = []


def job_env() -> dict[str, str]:
    # Executors' Python workers must import this checkout and run this venv's interpreter.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


@dataclass
class Result:
    code: int
    stdout: list[str]
    stderr: list[str]

    @property
    def record(self) -> dict[str, Any] | None:
        """The run summary: the last stdout line, parsed (None if the job printed none)."""
        try:
            return json.loads(self.stdout[-1])
        except (IndexError, ValueError):
            return None

    def job_lines(self) -> list[str]:
        """stderr lines the job wrote (progress and errors), without the JVM's log lines."""
        return [line for line in self.stderr if line.startswith("[") or "error:" in line or "Traceback" in line]


def job_file(job: str) -> Path:
    """``jobs/<job>.py`` (tokenize's file is ``tokenize_job.py``: as a script, ``tokenize.py``
    would shadow the standard library's module)."""
    return REPO / "jobs" / f"{'tokenize_job' if job == 'tokenize' else job}.py"


class Job:
    """One ``spark-submit jobs/<job>.py ...`` run; its stderr lines can be waited for."""

    def __init__(self, job: str, *args: Any, master: str = LOCAL, conf: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        cmd = [str(SPARK_SUBMIT), "--master", master, "--driver-memory", "1g"]
        for key, value in {"spark.ui.enabled": "false", **(conf or {})}.items():
            cmd += ["--conf", f"{key}={value}"]
        cmd += [str(job_file(job)), *map(str, args)]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, env=job_env(), cwd=cwd or REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        _STARTED.append(self)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, False), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, True), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, stream, into: list[str], notify: bool) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if notify:
                self._lines.put(into[-1])
        if notify:
            self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str | None:
        """Block until a stderr line matches ``pattern`` (a regex); None if the job ended first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line matching {pattern!r} in {timeout} s: {self.stderr[-5:]}") from None
            if line is None:
                self._lines.put(None)  # keep the end mark for the next waiter
                return None
            if regex.search(line):
                return line

    def kill(self) -> None:
        """SIGKILL the whole process group (driver, JVM, executors, Python workers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.finish()

    def finish(self, timeout: float = TIMEOUT) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        for t in self._readers:
            t.join(timeout=30)
        _reap_group(self.proc.pid)
        return Result(self.proc.returncode, self.stdout, self.stderr)

    def executors(self) -> list[psutil.Process]:
        """The executor JVMs of this job (``local-cluster``: children of its driver JVM)."""
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        # the java processes only: a worker relaunching an executor briefly shows a
        # jspawnhelper child with the same command line
        return [p for p in tree if _cmdline_has(p, "CoarseGrainedExecutorBackend") and _name(p) == "java"]


def _cmdline_has(proc: psutil.Process, text: str) -> bool:
    try:
        return any(text in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _reap_group(pgid: int) -> None:
    """The driver is gone; end anything of its process group still alive (orphaned executors)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """End every job this process started that is still running, by process group id."""
    for job in _STARTED:
        if job.proc.poll() is None:
            job.kill()
        else:
            _reap_group(job.proc.pid)


def run(job: str, *args: Any, **kw: Any) -> Result:
    return Job(job, *args, **kw).finish()


# --------------------------------------------------------------------------- tables


def delta_tables(root: Path) -> list[Path]:
    """Every Delta table under ``root`` (folders holding a ``_delta_log``)."""
    return sorted(p.parent for p in Path(root).rglob("_delta_log") if p.is_dir())


def versions(root: Path) -> dict[str, int]:
    """``{table: version}`` of every Delta table under ``root``."""
    return {str(t.relative_to(root)): deltalake.DeltaTable(str(t)).version() for t in delta_tables(root)}


def check_committed_files(table: Path) -> dict[str, int]:
    """The log against the disk: every committed file exists and holds the rows its add action says,
    and no other Parquet file sits in a ``w-<uuid>/`` folder (one Spark write, committed whole)
    that the latest version commits.

    Returns ``{"files": committed files, "rows": rows, "stray": files the latest version does not
    commit}`` (older versions' files and what killed writers left; readers never see them).
    """
    dt = deltalake.DeltaTable(str(table))
    adds = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    committed = {str(table / a["path"]) for a in adds}
    rows = 0
    for a in adds:
        path = table / a["path"]
        assert path.is_file(), f"{table}: committed file {a['path']} is not on disk"
        n = pq.read_metadata(path).num_rows
        assert n == a["num_records"], f"{table}: {a['path']} holds {n} rows, its add action says {a['num_records']}"
        rows += n
    folders = {os.path.dirname(p) for p in committed if os.path.basename(os.path.dirname(p)).startswith("w-")}
    on_disk = {str(p) for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}
    leaked = sorted(p for p in on_disk - committed if os.path.dirname(p) in folders and "/_temporary/" not in p)
    assert not leaked, f"{table}: uncommitted files inside a committed folder: {leaked[:3]}"
    return {"files": len(committed), "rows": rows, "stray": len(on_disk - committed)}


def figure(section: str, **row: Any) -> None:
    FIGURES[section].append(row)


def figures_markdown() -> str:
    out = []
    for section, rows in FIGURES.items():
        keys = list(dict.fromkeys(k for r in rows for k in r))
        out += [f"### {section}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(str(r.get(k, "")).replace("|", "\\|") for k in keys) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def commands(bronze: Path, out: Path) -> dict[str, list[str]]:
    """Each job's main path on ``bronze``, writing under ``out`` (gmm_transform needs gmm_fit's fit_dir)."""
    return {
        "cluster_eval": ["--input", bronze, "--format", "delta", "--features", "x,y", "--k-min", "2", "--k-max", "4",
                         "--silhouette-sample", "500", "--output", out / "cluster_eval"],
        "gmm_fit": ["--input", bronze, "--columns", "amount,score", "--categorical", "segment", "--mixed", "amount=0",
                    "--max-components", "5", "--fit-dir", out / "gmm_fit"],
        "gmm_transform": ["--input", bronze, "--fit-dir", out / "gmm_fit", "--output", out / "gmm_transform"],
        "tokenize": ["--input", bronze, "--columns", "amount,score,age", "--bins", "32", "--output", out / "tokenize"],
    }


# Columns that differ between two correct runs (timestamps, timings, run ids, gmm_fit's count
# of attempts at a column, which a killed run raises), and the
# source and input paths (a different folder per run): compared by their last part only.
VOLATILE = {"_ingested_at", "fit_seconds", "eval_seconds", "started_at", "finished_at", "seconds", "fit_id",
            "run_id", "ingested_at", "mtime_ms", "attempt", "computed_at"}
PATHS = ("_source_file", "path", "baseline_table", "current_table", "input_table")
RUN_ID = r"[a-z_]+-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}"  # e.g. drift-20261202T210238Z-6b7baafc


def comparable(spark, table: Path, ignore: frozenset[str] = frozenset()):
    """A table as Spark reads it through the project's Delta layer, without the volatile columns
    (and those of ``ignore``)."""
    from pyspark.sql import functions as F

    from pipelines import delta

    df = delta.read_table(spark, str(table))
    df = df.drop(*[c for c in df.columns if c in VOLATILE | ignore])
    for c in PATHS:
        if c in df.columns:
            df = df.withColumn(c, F.element_at(F.split(c, "/"), -1))
    if "reason" in df.columns:  # gmm_fit names the drift run that triggered a refit
        df = df.withColumn("reason", F.regexp_replace("reason", RUN_ID, "<run>"))
        # a column first fitted by the re-run of a killed run says why it ran ("last attempt
        # running": the killed attempt; "input changed": a killed pipeline had fitted it on the
        # bronze version it wrote, and the re-run wrote the next); the undisturbed run's first
        # fit says "not fitted yet"
        df = df.withColumn("reason", F.regexp_replace(
            "reason", "^(last attempt (running|failed)|input changed: .*)$", "not fitted yet"))
    return df


def assert_same_tables(spark, got_root: Path, want_root: Path, *, section: str, label: str,
                       ignore: frozenset[str] = frozenset()) -> int:
    """Every Delta table under ``want_root`` exists under ``got_root`` with the same rows (chispa,
    any row order). Returns the number of tables compared; each is recorded under ``section``."""
    from chispa import assert_df_equality

    want = {str(t.relative_to(want_root)) for t in delta_tables(want_root)}
    got = {str(t.relative_to(got_root)) for t in delta_tables(got_root)}
    assert want <= got, f"tables missing under {got_root}: {sorted(want - got)}"
    for rel in sorted(want):
        a, b = comparable(spark, got_root / rel, ignore), comparable(spark, want_root / rel, ignore)
        assert_df_equality(a, b, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True,
                           ignore_column_order=True)
        figure(section, run=label, table=rel, rows=b.count(), equal="yes")
    return len(want)


def event_log_conf(folder: Path) -> dict[str, str]:
    """Spark conf that writes the job's event log (JSON lines, one per listener event) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"spark.eventLog.enabled": "true", "spark.eventLog.dir": folder.as_uri(),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}


def _event_logs(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "appstatus"))]


def _job_starts(folder: Path) -> set[int]:
    ids = set()
    for log in _event_logs(folder):
        for line in log.read_text().splitlines():
            if '"Event":"SparkListenerJobStart"' in line:
                try:
                    ids.add(json.loads(line)["Job ID"])
                except ValueError:  # a line being written
                    pass
    return ids


def wait_for_next_spark_job(folder: Path, job: Job) -> bool:
    """Block until the event log in ``folder`` shows a Spark job that was not there when called
    (Spark flushes the log at every job start; tasks are launched right after it): the moment a
    pass's tasks are running. False if the job ended first."""
    seen = _job_starts(folder)
    while job.proc.poll() is None:
        if _job_starts(folder) - seen:
            return True
        time.sleep(0.02)
    return False


def ui_conf() -> dict[str, str]:
    """Spark conf that turns the driver's UI on at a free port: its REST API says, live, which
    executor is running a task (the event log is flushed at job starts, not at task starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"spark.ui.enabled": "true", "spark.ui.port": str(port), "spark.ui.showConsoleProgress": "false"}


def _rest(conf: dict[str, str], path: str) -> Any:
    url = f"http://127.0.0.1:{conf['spark.ui.port']}/api/v1/{path}"
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


def executor_running_a_task(job: Job, conf: dict[str, str], rng: random.Random,
                            when: Callable[[], bool] = lambda: True) -> psutil.Process | None:
    """Block until the driver's status store shows an executor with a running task while
    ``when()`` holds, and return that executor's JVM (by its ``--executor-id``; one of them,
    by ``rng``, if both are busy). None if the job ended first."""
    app = None
    while job.proc.poll() is None:
        busy: list[str] = []
        try:
            app = app or _rest(conf, "applications")[0]["id"]
            if when():
                busy = sorted(e["id"] for e in _rest(conf, f"applications/{app}/executors")
                              if e["id"] != "driver" and e["activeTasks"] > 0)
        except (OSError, ValueError, IndexError, KeyError):  # the UI is not up yet
            pass
        if busy:
            wanted = rng.choice(busy)
            for proc in job.executors():
                try:
                    args = proc.cmdline()
                except psutil.Error:
                    continue
                if "--executor-id" in args and args[args.index("--executor-id") + 1] == wanted:
                    return proc
        time.sleep(0.005)
    return None


def failed_tasks(folder: Path) -> dict[str, int]:
    """Task attempts that did not succeed, by Spark's end reason (``ExecutorLostFailure``: an
    executor died under them), and ``executors_removed``, from the event log in ``folder``."""
    out: dict[str, int] = defaultdict(int)
    for log in _event_logs(folder):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["Event"] == "SparkListenerTaskEnd" and event["Task End Reason"]["Reason"] != "Success":
                out[event["Task End Reason"]["Reason"]] += 1
            elif event["Event"] == "SparkListenerExecutorRemoved":
                out["executors_removed"] += 1
    return dict(out)


def line_pattern(line: str) -> str:
    """A regex for a progress line with its decimal figures (timings, scores) left free."""
    return "^" + re.sub(r"\d+\\\.\d+(?:e[-+]?\d+)?", lambda _: r"[-+.\deE]+", re.escape(line)) + "$"


def frames_by_partition(table: Path) -> dict[Any, pl.DataFrame]:
    """A table's rows (volatile columns dropped, sorted), split by its first partition column."""
    dt = deltalake.DeltaTable(str(table))
    frame = pl.read_delta(str(table))
    frame = frame.drop([c for c in frame.columns if c in VOLATILE])
    frame = frame.with_columns([pl.col(c).str.split("/").list.last() for c in PATHS if c in frame.columns])
    frame = frame.sort(frame.columns, nulls_last=True)
    parts = dt.metadata().partition_columns
    if not parts:
        return {None: frame}
    return {key[0]: group for key, group in frame.group_by(parts[0], maintain_order=True)}


def run_records(root: Path) -> dict[str, dict[str, Any]]:
    """``{run_id: record}`` of every ``_runs/*.json`` under ``root``."""
    return {p.stem: json.loads(p.read_text()) for p in Path(root).rglob("_runs/*.json")}
