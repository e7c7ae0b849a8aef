"""MLflow tracking (pipelines/tracking.py): cluster_eval and gmm_fit runs in a local file store."""

from __future__ import annotations

import json
import sys

import polars as pl
import pytest

from pipelines import delta

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _client(out):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"file://{out / 'mlruns'}")


def test_cluster_eval_logs_one_run_with_a_series_per_k(spark, tmp_path, capsys):
    from jobs.cluster_eval import main

    out = tmp_path / "ce"
    assert main(["--output", str(out), "--k-max", "5", "--silhouette-sample", "2000", "--mlflow"]) == 0
    record = _last_json(capsys)
    assert "mlflow" in record, record["warnings"]
    client = _client(out)
    (experiment,) = [e for e in client.search_experiments() if e.name == "pipelines"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == record["mlflow"]["run_id"] and run.data.tags["pipelines.run_id"] == record["run_id"]
    assert run.data.tags["status"] == "succeeded"
    metrics = delta.scan_table(str(out / "metrics")).sort("k").collect()
    for name in ("calinski_harabasz", "davies_bouldin", "inertia"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert history == list(zip(metrics["k"].to_list(), metrics[name].to_list(), strict=True)), name
    assert run.data.metrics["recommended_k"] == record["recommended_k"] == 4
    assert run.data.params["best_k.calinski_harabasz"] == str(record["best_k"]["calinski_harabasz"])
    assert run.data.params["k_max"] == "5"
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/summary.json", "report/plots"} <= report
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "report/plots")}
    assert plots == {f"report/plots/{p.name}" for p in (out / "plots").iterdir()} and plots
    assert [a.path for a in client.list_artifacts(run.info.run_id, "run_record")] == [f"run_record/{record['run_id']}.json"]


def test_gmm_fit_logs_per_column_metrics_and_status(spark, tmp_path, capsys):
    from sklearn.datasets import load_diabetes

    from jobs.gmm_fit import main

    frame = load_diabetes(as_frame=True, scaled=False).frame
    src = str(tmp_path / "bronze")
    data = pl.from_pandas(frame[["bmi", "bp", "s1"]])
    delta.write_polars(data, src, mode="overwrite")
    fit_dir = tmp_path / "fit"
    code = main(["--input", src, "--fit-dir", str(fit_dir), "--columns", "bmi,bp,s1", "--mlflow"])
    record = _last_json(capsys)
    assert code == 0 and record["status"] == "succeeded"
    assert "mlflow" in record, record["warnings"]
    (run,) = _client(fit_dir).search_runs([_client(fit_dir).get_experiment_by_name("pipelines").experiment_id])
    assert run.data.tags["status"] == "succeeded"
    assert set(record["columns"]) == {"bmi", "bp", "s1"}
    for column, info in record["columns"].items():
        assert run.data.tags[f"status.{column}"] == info["status"] == "succeeded"
        assert run.data.metrics[f"{column}.n_modes"] == info["n_modes"]
        assert run.data.metrics[f"{column}.n_rows"] == info["n_rows"] == len(frame)
    assert run.data.metrics["count.fitted"] == 3 and run.data.metrics["count.failed"] == 0


def test_jobs_run_the_same_without_mlflow(spark, tmp_path, capsys, monkeypatch):
    from jobs.cluster_eval import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    out = tmp_path / "ce"
    assert main(["--output", str(out), "--k", "3,4,5", "--silhouette-sample", "0", "--mlflow"]) == 0
    record = _last_json(capsys)
    assert "mlflow" not in record and not record["warnings"] and not (out / "mlruns").exists()
    assert record["recommended_k"] == 4
