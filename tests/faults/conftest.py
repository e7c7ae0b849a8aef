"""Fixtures of the fault suite: a small real bronze table, the jobs' commands, the figures report."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import FIGURES, ROWS, figures_markdown, kill_all


@pytest.fixture(scope="session", autouse=True)
def _end_every_job():
    yield
    kill_all()


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def demo_csv(work) -> Path:
    from pipelines.datasets import write_default_source

    return Path(write_default_source(str(work / "source" / "demo.csv"), rows=ROWS))


@pytest.fixture(scope="session")
def bronze(spark, work, demo_csv) -> Path:
    """The demo source ingested (in this process's session): a bronze table with ``_row_id``."""
    from jobs.ingest import main

    out = work / "ingest"
    assert main(["--source", str(demo_csv), "--format", "csv", "--output", str(out)]) == 0
    return out / "bronze"


def pytest_terminal_summary(terminalreporter, config):
    if not FIGURES:
        return
    text = figures_markdown()
    path = Path(config._tmp_path_factory.getbasetemp()) / "fault_figures.md"
    path.write_text(text)
    terminalreporter.write_sep("=", "fault suite figures")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture(scope="session")
def reference(work, bronze, demo_csv):
    """Undisturbed ``spark-submit --master local[2]`` runs of every job's main path under ``ref/``,
    made when a test first asks for that job: ``reference["lines"](job)`` are the progress lines
    it printed (the driver-kill points are chosen from them)."""
    from harness import LOCAL, commands, run

    root = work / "ref"
    jobs = {"ingest": ["--source", demo_csv, "--format", "csv", "--output", root / "ingest"], **commands(bronze, root)}
    lines: dict[str, list[str]] = {}

    def progress_lines(job: str) -> list[str]:
        if job not in lines:
            if job == "gmm_transform":
                progress_lines("gmm_fit")  # its fit_dir
            res = run(job, *jobs[job], master=LOCAL)
            assert res.code == 0, (job, res.job_lines()[-5:])
            lines[job] = [line for line in res.stderr if line.startswith(f"[{job}] ")]
        return lines[job]

    return {"root": root, "args": jobs, "lines": progress_lines}
