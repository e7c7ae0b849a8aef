"""Runs: ids, summaries, progress, and the job entry-point wrapper.

Every job run gets a run id and writes ``<output>/_runs/<run_id>.json`` (job, inputs,
parameters, counts, timings, outputs, status) when it starts (status ``running``) and
again when it ends. The same JSON is the last line on stdout. A
:class:`~pipelines.errors.UserError` ends the run with one line on stderr and exit
code 2 (:class:`~pipelines.errors.ConflictError`: 1); a data file Spark cannot read, one
line naming it and exit 1; any other exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines import delta, fs, tracking
from pipelines.errors import DataFileError, UserError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Config


def console(message: str) -> None:
    """Write ``message`` (a progress or error line) to the job's stderr.

    Under ``spark-submit`` the Python driver is a child of the JVM, whose PythonRunner
    merges the child's stderr into stdout; there the line goes through the JVM's own
    ``System.err`` (the py4j gateway spark-submit opened), so stdout keeps only what the
    job prints there (the JSON summary, last). Elsewhere it is plain ``sys.stderr``.
    """
    err = _jvm_stderr()
    if err is None:
        print(message, file=sys.stderr, flush=True)
    else:
        err.println(message)
        err.flush()


def _jvm_stderr():
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not a child of spark-submit's JVM
        return None
    try:
        from pyspark import SparkContext

        SparkContext._ensure_initialized()  # connects to the running JVM; no SparkContext is made
        return SparkContext._jvm.System.err
    except Exception:  # no usable gateway: stderr as it is
        return None


_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?\s+SQLSTATE")
_CAUSE = re.compile(r"^Caused by: ([\w.$]+): (.*)$", re.MULTILINE)


def read_fault(exc: BaseException) -> str | None:
    """One line naming the data file Spark could not read (corrupt, truncated, vanished), else None.

    An I/O fault, not bad input: the same Spark error also stands for a storage read that
    failed, so it exits 1 (a failure), with the file and the deepest cause instead of the
    Java and Python traces.
    """
    if isinstance(exc, DataFileError):  # the engine's own read of a unit's file
        return str(exc)
    text = str(exc)
    match = _FAILED_READ.search(text)
    if match is None:
        return None
    causes = _CAUSE.findall(text)
    why = f" ({causes[-1][0].rsplit('.', 1)[-1]}: {causes[-1][1].strip()})" if causes else ""
    return f"{re.sub(r'^file:(//)?', '', match.group(1))}: cannot read this data file{why}"


def log_fault(exc: BaseException) -> str | None:
    """One line naming a damaged commit of a table's ``_delta_log`` that Spark's Delta could not
    read (cut short, or edited so its Hadoop ``.crc`` no longer matches), else None.

    Bad input, as delta-rs reports it: the table's log is not a valid Delta log (exit 2).
    """
    if isinstance(exc, DataFileError):
        return None
    match = _FAILED_READ.search(str(exc))
    if match is None:
        return None
    path = re.sub(r"^file:(//)?", "", match.group(1))
    if "/_delta_log/" not in path:
        return None
    table = path.split("/_delta_log/", 1)[0]
    causes = _CAUSE.findall(str(exc))
    why = f"{causes[-1][0].rsplit('.', 1)[-1]}: {causes[-1][1].strip()}" if causes else "unreadable"
    return f"{table}: cannot open Delta table: {delta.bad_log_file(table) or f'{path}: {why}'}"


def new_run_id(job: str) -> str:
    """``<job>-<UTC timestamp>-<8 hex>``: sortable by start time, unique across processes."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{job}-{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass
class Run:
    """The record of one job run, filled in by the stage and written at the end."""

    job: str
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    started_at: str = ""
    status: str = "running"
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The engine that runs the stage's per-file tasks (pipelines.engine.Engine); set by execute.
    engine: Any = field(default=None, repr=False)
    record: bool = True  # False for a preview (--dry-run): the summary is printed, never written
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        self.run_id = self.run_id or new_run_id(self.job)
        self.started_at = self.started_at or datetime.now(UTC).isoformat()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time a block into ``timings[name]`` (seconds, accumulated) and report it on stderr."""
        self.progress(f"{name} ...")
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - t0, 3)
            self.progress(f"{name} done in {self.timings[name]:.1f}s")

    def progress(self, message: str) -> None:
        console(f"[{self.job}] {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.progress(f"warning: {message}")

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.monotonic() - self._t0, 3),
            "output": self.output,
            "params": self.params,
            "counts": self.counts,
            "timings": self.timings,
            "outputs": self.outputs,
            "warnings": self.warnings,
            "error": self.error,
            **self.details,
        }

    def write_summary(self) -> dict[str, Any]:
        """Write ``<output>/_runs/<run_id>.json`` (unless :attr:`record` is off) and return the summary."""
        data = self.summary()
        if not self.record:
            return data
        fs.write_text(fs.join(self.output, "_runs", f"{self.run_id}.json"), json.dumps(data, default=str, indent=2))
        return data


class JobArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (argparse's own code for usage errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        console(f"{self.prog}: error: {message}")
        raise SystemExit(2)


def csv_list(text: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]`` (an argparse ``type``)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def int_list(text: str) -> list[int]:
    """``2,3,5`` -> ``[2, 3, 5]`` (an argparse ``type``)."""
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def table_namespace(text: str) -> dict[str, str]:
    """``main.pipelines`` -> ``{"catalog": "main", "schema": "pipelines"}`` (an argparse ``type``)."""
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isidentifier() for p in parts):
        raise argparse.ArgumentTypeError(f"expected CATALOG.SCHEMA (two identifiers), got {text!r}")
    return {"catalog": parts[0], "schema": parts[1]}


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--tables CATALOG.SCHEMA`` (the ``tables`` config section), for every job."""
    parser.add_argument("--config", metavar="FILE", help="YAML config applied over conf/base.yaml and the environment overlay")
    parser.add_argument("--tables", type=table_namespace, metavar="CATALOG.SCHEMA",
                        help="write Delta outputs as named tables CATALOG.SCHEMA.<stage>_<table> (native Delta); files stay under the output root")
    parser.add_argument("--mlflow", action="store_const", const="always", default=None, dest="mlflow",
                        help="log the run to MLflow here too (tracking URI from the config, else a file store <output>/mlruns)")


def output_roots(cfg: Config) -> list[str]:
    """Every stage's output root in ``cfg`` (the folders whose Delta tables a namespace names)."""
    return [
        str(value)
        for section in cfg.model_dump().values()
        if isinstance(section, dict)
        for key, value in section.items()
        if key in ("output", "fit_dir", "baseline_fit") and value
    ]


def add_engine_flag(parser: argparse.ArgumentParser) -> None:
    """``--engine spark|local`` (``polars`` = ``local``): sets ``engine.name`` of the config."""
    parser.add_argument("--engine", choices=["spark", "local", "polars"],
                        help="who runs the per-file tasks: spark (default) or local threads without Spark (alias polars)")


def finish(run: Run, stage: Callable[[], None], *, report: Callable[[], Any] | None = None,
           echo: bool = True) -> tuple[int, dict[str, Any]]:
    """Run ``stage()``, set ``run``'s status and error, write its summary; return the exit code and summary.

    ``report`` (e.g. MLflow tracking) runs after the status is known and before the
    summary is written, so what it records lands in the summary.

    A :class:`UserError` fails the run with its exit code (2; 1 for a conflict) and its
    one-line message; a data file Spark cannot read is one line naming it (exit 1); any
    other exception is a bug: its traceback is printed and the code is 1. With ``echo=False``
    the one-line errors are left to the caller (a pipeline stage: the pipeline prints its
    own line naming the stage); a bug's traceback is printed either way.
    """
    try:
        stage()
        run.status = "succeeded" if run.status == "running" else run.status
        code = 0 if run.status == "succeeded" else 1
    except UserError as exc:
        if echo:
            console(f"error: {exc}")
        run.status, run.error, code = "failed", str(exc), exc.exit_code
    except Exception as exc:  # a bug (keep the traceback) or an unreadable data or log file; still record the run
        damaged = log_fault(exc)  # bad input (exit 2), as delta-rs reports it
        fault = damaged or read_fault(exc)  # an I/O fault (exit 1)
        if fault is None:
            console(traceback.format_exc().rstrip())
        elif echo:
            console(f"error: {fault}")
        code = UserError.exit_code if damaged else 1
        run.status, run.error = "failed", fault or f"{type(exc).__name__}: {exc}"
    if report is not None:
        report()
    return code, run.write_summary()


def execute(
    job: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    stage: Callable[[SparkSession | None, Any, Run], None],
    *,
    section: str | None = None,
    output_key: str = "output",
    needs_spark: Callable[[Any, str], bool] | None = None,
) -> int:
    """Parse flags, load the config, run ``stage`` and report. Returns the exit code.

    Flags whose ``dest`` is a key of the job's config section override it (``--engine``
    sets ``engine.name``); ``None`` (an absent flag) never does. The stage gets its own
    config section (the whole config for ``section="*"``) and a :class:`Run` whose
    ``engine`` is built from the ``engine`` section; flags then go to the ``job`` section. Spark is started only when
    ``needs_spark(settings, engine_name)`` says so (default: always).
    """
    from pipelines.config import load_config
    from pipelines.engine import Engine, engine_name

    args = parser.parse_args(argv)
    section = section or job
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "engine", "tables", "mlflow")}
    overrides: dict[str, dict[str, Any]] = {job if section == "*" else section: flags,
                                            "tables": getattr(args, "tables", None) or {},
                                            "mlflow": {"track": getattr(args, "mlflow", None)}}
    if getattr(args, "engine", None) is not None:
        overrides["engine"] = {"name": args.engine}
    try:
        cfg = load_config(args.config, overrides=overrides)
    except UserError as exc:
        console(f"error: {exc}")
        return exc.exit_code
    settings = cfg if section == "*" else getattr(cfg, section)
    own = getattr(cfg, job) if section == "*" else settings
    # A preview (--dry-run) leaves no trace: its summary is printed, never written.
    run = Run(job=job, output=str(getattr(own, output_key)), params=own.model_dump(),
              record=not getattr(own, "dry_run", False))

    with ExitStack() as stack:
        if cfg.delta.backend != "auto":  # "auto" keeps a backend forced by the caller
            stack.callback(delta.set_backend, delta.forced_backend())
            delta.set_backend(cfg.delta.backend)

        def go() -> None:
            delta.use_tables(cfg.tables.catalog, cfg.tables.schema_name, roots=output_roots(cfg))
            name = engine_name(cfg.engine.name)
            spark = None
            if needs_spark is None or needs_spark(settings, name):
                from pipelines.spark import describe, session

                spark = stack.enter_context(session(cfg.spark))
            run.engine = Engine(name, spark, workers=cfg.engine.workers, spark_path=cfg.engine.spark_path,
                                batch_rows=cfg.engine.batch_rows)
            try:
                stage(spark, settings, run)
            finally:
                if spark is not None:  # with the executors that really ran the tasks
                    run.details["spark"] = describe(spark)

        run.write_summary()  # status "running" until the end: a killed run is never recorded as succeeded
        # While the session is up: a named metrics table is read through it.
        code, data = finish(run, go, report=lambda: tracking.log_run(cfg, run))
    print(json.dumps(data, default=str), flush=True)
    return code
