"""The whole chain in one run: ingest -> cluster_eval -> gmm_fit -> gmm_transform -> tokenize.

On the built-in demo data a second day follows: a new batch with one shifted column
(:data:`DAY_TWO_SHIFT`) is ingested over bronze, drift compares it with the version the
models were fitted on, gmm_fit refits only the drifted columns and gmm_transform runs again.

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
from pipelines.runs import Run, finish

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Config

Stage = Callable[["SparkSession", Any, Run], None]

# Column roles of the built-in demo source.
DEMO_ROLES: dict[str, dict[str, Any]] = {
    # the demo's groups are in (x, y); its other columns are for the GMM and tokenizer stages
    "cluster_eval": {"features": ["x", "y"]},
    "gmm_fit": {"columns": ["amount", "score", "segment"], "categorical": ["segment"], "mixed": {"amount": [0.0]}},
    "tokenize": {"columns": ["amount", "score", "age"]},
}
DAY_TWO_SHIFT = {"score": 1.5}  # the demo's second batch: one column moved, the others redrawn alike


def _stages() -> list[tuple[str, Stage, str]]:
    from pipelines import drift, ingest, tokenize
    from pipelines.cluster import run as cluster_eval
    from pipelines.gmm import fit as gmm_fit
    from pipelines.gmm import transform as gmm_transform

    return [
        ("ingest", ingest.run, "output"),
        ("cluster_eval", cluster_eval.run, "output"),
        ("gmm_fit", gmm_fit.run, "fit_dir"),
        ("gmm_transform", gmm_transform.run, "output"),
        ("tokenize", tokenize.run, "output"),
        ("drift", drift.run, "output"),
    ]


def run_pipeline(spark: SparkSession, cfg: Config, run: Run) -> None:
    """Run every stage in order; ``run.details["stages"]`` holds each stage's summary.

    The pipeline's settings are the whole config (each stage gets its own section).
    """
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

    stages = {name: (stage, key) for name, stage, key in _stages()}
    plan = [(name, paths[name]) for name in ("ingest", "cluster_eval", "gmm_fit", "gmm_transform", "tokenize")]
    if cfg.pipeline.source is None:
        day_two = write_default_source(fs.join(out, "source", "demo_day2.csv"), seed=8, shift=DAY_TWO_SHIFT)
        drift = {"current": bronze, "baseline": None, "baseline_fit": fs.join(out, "gmm_fit"), "output": fs.join(out, "drift")}
        plan += [("ingest", {**paths["ingest"], "source": day_two}), ("drift", drift),
                 ("gmm_fit", {**paths["gmm_fit"], "only_drifted": drift["output"]}), ("gmm_transform", paths["gmm_transform"])]
    summaries = run.details.setdefault("stages", [])
    for i, (name, update) in enumerate(plan, start=1):
        stage, output_key = stages[name]
        section = getattr(cfg, name).model_copy(update={**roles.get(name, {}), **update})
        sub = Run(job=name, output=str(getattr(section, output_key)), params=section.model_dump(), engine=run.engine)
        label = name if i <= 5 else f"{name} (day 2)"
        run.progress(f"stage {i}/{len(plan)}: {label}")
        with run.timed(label):
            code, summary = finish(sub, lambda stage=stage, section=section, sub=sub: stage(spark, section, sub),
                                   echo=False)  # the pipeline's own error line names the stage
        summaries.append({k: summary[k] for k in ("job", "run_id", "status", "output", "counts", "outputs", "error")})
        run.outputs[label] = sub.output
        if sub.status != "succeeded":
            if code == UserError.exit_code:  # as the stage's own job would end: exit 2 and one error line
                raise UserError(f"stage {label}: {sub.error}")
            run.status, run.error = "failed", f"stage {label} failed: {sub.error}"
            run.progress(f"error: {run.error}")
            return
