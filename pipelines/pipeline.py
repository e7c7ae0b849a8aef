"""The whole chain in one run: ingest -> cluster_eval -> gmm_fit -> gmm_transform -> tokenize.

Each stage runs exactly as its own job would (same stage function, same config
section, its own run summary under its own output folder); this module only chooses
the folders, passes the bronze table along, and stops at the first stage that fails.
Without ``--source`` it runs on the built-in demo CSV (:mod:`pipelines.datasets`),
with column roles preset for it; with a ``--source`` the column roles come from the
config's ``gmm_fit`` / ``tokenize`` sections (or default to every numeric column).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines import fs
from pipelines.errors import UserError
from pipelines.runs import Run

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Config

Stage = Callable[["SparkSession", "Config", Run], None]

# Column roles of the built-in demo source.
DEMO_ROLES: dict[str, dict[str, Any]] = {
    "gmm_fit": {"columns": ["amount", "score", "segment"], "categorical": ["segment"], "mixed": {"amount": [0.0]}},
    "tokenize": {"columns": ["amount", "score", "age"]},
}


def _stages() -> list[tuple[str, Stage, str]]:
    from pipelines.cluster.run import stage_run as cluster_eval
    from pipelines.gmm.fit import run_gmm_fit
    from pipelines.gmm.transform import run_stage as gmm_transform
    from pipelines.ingest import run_ingest
    from pipelines.tokenize import run as tokenize

    return [
        ("ingest", run_ingest, "output"),
        ("cluster_eval", cluster_eval, "output"),
        ("gmm_fit", run_gmm_fit, "fit_dir"),
        ("gmm_transform", gmm_transform, "output"),
        ("tokenize", tokenize, "output"),
    ]


def run_pipeline(spark: SparkSession, cfg: Config, run: Run) -> None:
    """Run every stage in order; ``run.details["stages"]`` holds each stage's summary."""
    from pipelines.datasets import write_default_source

    out = cfg.pipeline.output
    source, fmt = cfg.pipeline.source, cfg.pipeline.format
    roles: dict[str, dict[str, Any]] = {}
    if source is None:
        source, fmt, roles = write_default_source(fs.join(out, "source", "demo.csv")), "csv", DEMO_ROLES
        run.progress(f"no --source: using the built-in demo dataset {source}")
    elif fmt is None:
        raise UserError("--format is required with --source (csv, parquet, json or delta)")
    bronze = fs.join(out, "ingest", "bronze")
    paths: dict[str, dict[str, Any]] = {
        "ingest": {"source": source, "format": fmt, "output": fs.join(out, "ingest")},
        "cluster_eval": {"input": bronze, "format": "delta", "output": fs.join(out, "cluster_eval")},
        "gmm_fit": {"input": bronze, "fit_dir": fs.join(out, "gmm_fit")},
        "gmm_transform": {"input": bronze, "fit_dir": fs.join(out, "gmm_fit"), "output": fs.join(out, "gmm_transform")},
        "tokenize": {"input": bronze, "output": fs.join(out, "tokenize")},
    }

    summaries = run.details.setdefault("stages", [])
    for i, (name, stage, output_key) in enumerate(_stages(), start=1):
        section = getattr(cfg, name).model_copy(update={**roles.get(name, {}), **paths[name]})
        stage_cfg = cfg.model_copy(update={name: section})
        sub = Run(job=name, output=str(getattr(section, output_key)), params=section.model_dump())
        run.progress(f"stage {i}/5: {name}")
        with run.timed(name):
            refused: type[UserError] | None = None
            try:
                stage(spark, stage_cfg, sub)
                sub.status = "succeeded" if sub.status == "running" else sub.status
            except UserError as exc:
                sub.status, sub.error, refused = "failed", str(exc), type(exc)
        summary = sub.write_summary()
        summaries.append({k: summary[k] for k in ("job", "run_id", "status", "output", "counts", "outputs", "error")})
        run.outputs[name] = sub.output
        if sub.status != "succeeded":
            if refused is not None:  # as the stage's own job would end: its exit code and one error line
                raise refused(f"stage {name}: {sub.error}")
            run.status, run.error = "failed", f"stage {name} failed: {sub.error}"
            run.progress(f"error: {run.error}")
            return
