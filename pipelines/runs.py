"""Runs: ids, summaries, progress, and the job entry-point wrapper.

Every job run gets a run id and writes ``<output>/_runs/<run_id>.json`` (job, inputs,
parameters, counts, timings, outputs, status). The same JSON is the last line on
stdout. A :class:`~pipelines.errors.UserError` ends the run with one line on stderr
and exit code 2; any other exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines import delta, fs, tracking
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Config


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
        print(f"[{self.job}] {message}", file=sys.stderr, flush=True)

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
        """Write ``<output>/_runs/<run_id>.json`` and return the summary."""
        data = self.summary()
        fs.write_text(fs.join(self.output, "_runs", f"{self.run_id}.json"), json.dumps(data, default=str, indent=2))
        return data


class JobArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (argparse's own code for usage errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
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
        if key in ("output", "fit_dir") and value
    ]


def execute(
    job: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    stage: Callable[[SparkSession, Config, Run], None],
    *,
    section: str | None = None,
    output_key: str = "output",
    extra_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> int:
    """Parse flags, load the config, run ``stage`` and report. Returns the exit code.

    Flags whose ``dest`` is a key of the job's config section override it; ``None``
    (an absent flag) never does.
    """
    from pipelines.config import load_config
    from pipelines.spark import describe, session

    args = parser.parse_args(argv)
    section = section or job
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "tables", "mlflow")}
    run: Run | None = None
    with ExitStack() as stack:
        try:
            overrides = {section: flags, "tables": getattr(args, "tables", None) or {},
                         "mlflow": {"track": getattr(args, "mlflow", None)}, **(extra_overrides or {})}
            cfg = load_config(args.config, overrides=overrides)
            delta.set_backend(cfg.delta.backend)
            delta.use_tables(cfg.tables.catalog, cfg.tables.schema_name, roots=output_roots(cfg))
            settings = getattr(cfg, section)
            run = Run(job=job, output=str(getattr(settings, output_key)), params=settings.model_dump())
            spark = stack.enter_context(session(cfg.spark))
            # Recorded when the run ends, with the executors that really ran its tasks.
            stack.callback(lambda: run.details.__setitem__("spark", describe(spark)))
            stage(spark, cfg, run)
            run.status = "succeeded" if run.status == "running" else run.status
            code = 0 if run.status == "succeeded" else 1
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if run is None:
                return UserError.exit_code
            run.status, run.error, code = "failed", str(exc), UserError.exit_code
        except Exception as exc:  # a bug: keep the traceback, still record the run
            traceback.print_exc()
            if run is None:
                return 1
            run.status, run.error, code = "failed", f"{type(exc).__name__}: {exc}", 1
        # While the session is up: a named metrics table is read through it.
        tracking.log_run(cfg, run)
    data = run.write_summary()
    print(json.dumps(data, default=str), flush=True)
    return code
