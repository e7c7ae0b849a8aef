"""jobs/pipeline.py end to end on the built-in demo data, then both notebooks against its outputs."""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import polars as pl
import pytest

from pipelines import delta

REPO = Path(__file__).resolve().parents[1]


def _load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    cfg = out / "small.yaml"
    # Keep the sweep small: the point here is the chain, not the metrics.
    cfg.write_text("cluster_eval:\n  k_min: 2\n  k_max: 5\n  silhouette_sample: 2000\n")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = _load_job("pipeline").main(["--output", str(out), "--config", str(cfg)])
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    return code, summary, out


def test_pipeline_runs_every_stage(pipeline_run):
    code, summary, out = pipeline_run
    assert code == 0, summary.get("error")
    assert [s["job"] for s in summary["stages"]] == [
        "ingest", "cluster_eval", "gmm_fit", "gmm_transform", "tokenize",  # day 1
        "ingest", "drift", "gmm_fit", "gmm_transform",  # day 2: a batch with one shifted column
    ]
    assert all(s["status"] == "succeeded" for s in summary["stages"])
    # day 2 drifted in exactly the shifted column, and only that column was refitted on the new version
    drift = json.loads((out / "drift" / "summary.json").read_text())
    assert drift["drifted"] == ["score"], drift["columns"]
    refit = summary["stages"][7]
    assert refit["counts"]["to_fit"] == 1 and refit["counts"]["fitted"] == 1
    status = {r["column"]: r for r in pl.read_delta(str(out / "gmm_fit" / "fit_status")).to_dicts()}
    day_one = status["amount"]["input_version"]
    assert status["segment"]["input_version"] == day_one
    assert status["score"]["input_version"] == delta.table_version(str(out / "ingest" / "bronze")) > day_one
    for table in (
        "ingest/bronze",
        "ingest/quarantine",
        "cluster_eval/metrics",
        "cluster_eval/assignments",
        "gmm_fit/models",
        "gmm_fit/fit_status",
        "drift/drift",
        "gmm_transform/transformed_values",
        "gmm_transform/feature_values",
        "tokenize/tokenizer",
        "tokenize/tokens",
    ):
        assert delta.table_exists(str(out / table)), table
    bronze = pl.read_delta(str(out / "ingest" / "bronze"))
    assert bronze.height == 20_000
    assert pl.read_delta(str(out / "gmm_transform" / "transformed_values")).height == 20_000
    assert pl.read_delta(str(out / "tokenize" / "tokens")).height == 20_000
    # The demo data has four well-separated groups in (x, y), and the chain finds them.
    assert json.loads((out / "cluster_eval" / "summary.json").read_text())["recommended_k"] == 4


def test_notebooks_run_top_to_bottom(pipeline_run, monkeypatch, capsys):
    _, _, out = pipeline_run
    monkeypatch.setenv("PIPELINES_NB_OUTPUT", str(out / "cluster_eval"))
    monkeypatch.setenv("PIPELINES_NB_FIT_DIR", str(out / "gmm_fit"))
    monkeypatch.setenv("PIPELINES_NB_INPUT", str(out / "ingest" / "bronze"))
    monkeypatch.setenv("PIPELINES_NB_SAMPLE_ROWS", "5000")
    runpy.run_path(str(REPO / "notebooks" / "cluster_eval_explore.py"), run_name="__main__")
    shown = capsys.readouterr().out
    assert "recommended k: 4" in shown and "[plot]" in shown
    ns = runpy.run_path(str(REPO / "notebooks" / "gmm_fit_inspect.py"), run_name="__main__")
    assert set(ns["models"]) == {"amount", "score", "segment"}
    assert "Figure" in capsys.readouterr().out


def test_a_bad_source_is_one_error_line_naming_the_stage_and_path(spark, tmp_path, capsys):
    """The stage's error is printed once, by the pipeline, naming the stage (exit 2, as the stage's own job)."""
    missing = tmp_path / "missing.csv"
    code = _load_job("pipeline").main(["--source", str(missing), "--format", "csv", "--output", str(tmp_path / "o")])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert code == 2
    assert len(errors) == 1 and "stage 1/" not in errors[0], errors
    assert "stage ingest: " in errors[0] and str(missing) in errors[0], errors
    assert "Traceback" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["status"] == "failed"
