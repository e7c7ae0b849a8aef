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


def pipeline_config(work: Path) -> Path:
    """``jobs/pipeline.py``'s config for a ``--source`` run on the demo columns, at the sizes of
    :func:`harness.commands` (the built-in demo's roles apply only without ``--source``)."""
    path = work / "pipeline_faults.yaml"
    path.write_text("cluster_eval:\n  features: [x, y]\n  k_min: 2\n  k_max: 4\n  silhouette_sample: 500\n"
                    "gmm_fit:\n  columns: [amount, score, segment]\n  categorical: [segment]\n"
                    "  mixed: {amount: [0.0]}\n  max_components: 5\n"
                    "tokenize:\n  columns: [amount, score, age]\n  bins: 32\n")
    return path


@pytest.fixture(scope="session")
def reference(work, bronze, demo_csv):
    """Undisturbed ``spark-submit --master local[2]`` runs of every job's main path under ``ref/``,
    made when a test first asks for that job: ``reference["lines"](job)`` are the progress lines
    it printed (the driver-kill points are chosen from them)."""
    from harness import LOCAL, commands, run

    root = work / "ref"
    jobs = {"ingest": ["--source", demo_csv, "--format", "csv", "--output", root / "ingest"], **commands(bronze, root),
            "pipeline": ["--source", demo_csv, "--format", "csv", "--output", root / "pipeline",
                         "--config", pipeline_config(work)]}
    lines: dict[str, list[str]] = {}

    def progress_lines(job: str) -> list[str]:
        if job not in lines:
            if job == "gmm_transform":
                progress_lines("gmm_fit")  # its fit_dir
            res = run(job, *jobs[job], master=LOCAL)
            assert res.code == 0, (job, res.job_lines()[-5:])
            # the pipeline's stages print their own lines ([ingest] ..., [gmm_fit] ...) between its own
            prefixes = tuple(f"[{j}] " for j in jobs) if job == "pipeline" else (f"[{job}] ",)
            lines[job] = [line for line in res.stderr if line.startswith(prefixes)]
        return lines[job]

    return {"root": root, "args": jobs, "lines": progress_lines}
