"""MLflow tracking of job runs: one MLflow run per cluster_eval sweep and per gmm_fit.

Tracking happens when ``mlflow`` is importable (the ``mlflow`` extra; ``mlflow-skinny``
is enough) and tracking is configured: always on Databricks, elsewhere when
``MLFLOW_TRACKING_URI`` is set or the config asks (``mlflow.track: always`` or
``--mlflow``; the store is then ``tracking_uri`` or a file store ``<output>/mlruns``).
Without it the jobs run exactly the same. A tracking failure never fails a job: it
becomes a warning in the run record.

What is logged comes from the run record and the stage's own outputs, so stages need no
tracking code:

- cluster_eval: the per-k metrics table as metric series (``step = k``), the
  recommended k, the best k per metric, and report + plots + summary as artifacts;
- gmm_fit: per-column status, modes and row counts, and the fitted/failed counts.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import TYPE_CHECKING, Any

from pipelines import delta, fs

if TYPE_CHECKING:
    from pipelines.config import Config
    from pipelines.runs import Run

TRACKED_JOBS = ("cluster_eval", "gmm_fit")
# The user's own setting, read before mlflow.set_tracking_uri (which also sets this variable)
# can make one job's local store look like the user's choice to the next job in the process.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
_DEFAULT_EXPERIMENT = "/Shared/pipelines"  # Databricks experiments live in the workspace tree


def configured(cfg: Config) -> bool:
    """True when this process should log to MLflow (see the module docstring)."""
    track = cfg.mlflow.track
    if track == "never":
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return track == "always" or bool(os.environ.get("DATABRICKS_RUNTIME_VERSION") or _USER_TRACKING_URI)


def log_run(cfg: Config, run: Run) -> str | None:
    """Log ``run`` as one MLflow run if it is a tracked job and tracking is configured.

    Returns the MLflow run id (also recorded in ``run.details["mlflow"]``), or None.
    """
    if run.job not in TRACKED_JOBS or not configured(cfg):
        return None
    try:
        return _log(cfg, run)
    except Exception as exc:  # tracking is a report of the run, never a reason to fail it
        run.warn(f"MLflow tracking failed: {type(exc).__name__}: {exc}")
        return None


def _log(cfg: Config, run: Run) -> str:
    import mlflow

    on_databricks = bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))
    uri = cfg.mlflow.tracking_uri or _USER_TRACKING_URI
    if uri is None and not on_databricks:
        uri = "file://" + os.path.abspath(fs.local_path(fs.join(run.output, "mlruns")))
        # MLflow 3 refuses its file store unless asked; the user asked (no server, and
        # mlflow-skinny has no SQL store).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if uri is not None:
        mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.mlflow.experiment or (_DEFAULT_EXPERIMENT if on_databricks else "pipelines"))
    with mlflow.start_run(run_name=run.run_id, tags={"pipelines.job": run.job, "pipelines.run_id": run.run_id}) as active:
        mlflow.log_params({k: _param(v) for k, v in run.params.items() if v is not None})
        mlflow.set_tag("status", run.status)
        if run.error:
            mlflow.set_tag("error", run.error[:5000])
        mlflow.log_metrics({f"count.{k}": float(v) for k, v in run.counts.items() if _number(v)})
        (_cluster_eval if run.job == "cluster_eval" else _gmm_fit)(mlflow, run)
        with tempfile.TemporaryDirectory() as tmp:
            record = os.path.join(tmp, f"{run.run_id}.json")
            with open(record, "w", encoding="utf-8") as f:
                json.dump(run.summary(), f, default=str, indent=2)
            mlflow.log_artifact(record, artifact_path="run_record")
        run_id = active.info.run_id
    run.details["mlflow"] = {"run_id": run_id, "experiment": mlflow.get_experiment(active.info.experiment_id).name,
                             "tracking_uri": mlflow.get_tracking_uri()}
    return run_id


def _cluster_eval(mlflow, run: Run) -> None:
    metrics = run.outputs.get("metrics")
    if metrics and delta.table_exists(metrics):
        # One row per k: a bounded table.
        for row in delta.scan_table(metrics).sort("k").collect().to_dicts():
            step = int(row["k"])
            mlflow.log_metrics({name: float(v) for name, v in row.items() if name != "k" and _number(v)}, step=step)
    if run.details.get("recommended_k") is not None:
        mlflow.log_metric("recommended_k", float(run.details["recommended_k"]))
        mlflow.set_tag("recommendation", str(run.details.get("explanation", ""))[:5000])
    for metric, k in (run.details.get("best_k") or {}).items():
        if k is not None:
            mlflow.log_param(f"best_k.{metric}", k)
    for key in ("report_md", "report_html", "summary"):
        if run.outputs.get(key) and fs.exists(run.outputs[key]):
            mlflow.log_artifact(fs.local_path(run.outputs[key]), artifact_path="report")
    plots = run.outputs.get("plots")
    if plots and fs.exists(plots):
        mlflow.log_artifacts(fs.local_path(plots), artifact_path="report/plots")


def _gmm_fit(mlflow, run: Run) -> None:
    for column, info in (run.details.get("columns") or {}).items():
        mlflow.set_tag(f"status.{column}", info.get("status"))
        if info.get("error"):
            mlflow.set_tag(f"error.{column}", str(info["error"])[:5000])
        mlflow.log_metrics({f"{column}.{k}": float(v) for k, v in info.items()
                            if k not in ("status", "error") and _number(v)})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's parameter value limit
