"""The cluster_eval stage: read, prepare, sweep k, choose, write tables and the report."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipelines import fs
from pipelines.cluster import data, report
from pipelines.cluster.select import choose
from pipelines.cluster.sweep import METRICS_COLUMNS, Sweep, predict_sample, run_sweep, sample_frame
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import ClusterEvalSettings, Config
    from pipelines.runs import Run

METRICS_SCHEMA = (
    "k int, algorithm string, inertia double, calinski_harabasz double, davies_bouldin double, "
    "silhouette_spark double, silhouette_sample double, log_likelihood double, bic double, aic double, "
    "gap double, gap_sk double, n_iter int, converged boolean, cluster_sizes array<bigint>, "
    "fit_seconds double, eval_seconds double"
)
CENTERS_SCHEMA = (
    "k int, algorithm string, cluster int, size bigint, center array<double>, center_input_units array<double>"
)
# A scatter needs far fewer points than the exact silhouette; this bounds it when the
# silhouette sample is off.
_SCATTER_ROWS = 2000


def k_values(settings: ClusterEvalSettings, rows: int | None = None) -> list[int]:
    """The ks to evaluate, checked against the rows used (``rows=None``: the flags alone,
    before any data is read).

    Raises
    ------
    UserError
        A k below 2, or a k not below the number of rows.
    """
    if settings.k is not None:
        ks = sorted(set(settings.k))
        if not ks or ks[0] < 2:
            raise UserError(f"cluster_eval.k: every k must be >= 2, got {settings.k}")
        key = "cluster_eval.k"
    else:
        ks = list(range(settings.k_min, settings.k_max + 1))
        key = "cluster_eval.k_max"
    if rows is not None and ks[-1] >= rows:
        raise UserError(f"{key}: k={ks[-1]} must be smaller than the number of rows used ({rows})")
    return ks


def stage_run(spark: SparkSession, cfg: Config, run: Run) -> None:
    """Run cluster_eval with ``cfg.cluster_eval``; fill ``run`` and write everything under its output."""
    settings = cfg.cluster_eval
    out = settings.output
    source = settings.input or "built-in dataset"
    k_values(settings)  # a bad --k fails before the data are read and prepared
    with run.timed("prepare"):
        raw = data.read_input(spark, settings, run)
        prep = data.prepare(raw, settings, run, source=source)
    run.counts.update(prep.counts)
    ks = k_values(settings, prep.rows)
    run.details["features"] = prep.features
    run.details["scaling"] = {"method": settings.scale, "scaled": prep.scaled, "constant": prep.constant}
    try:
        with run.timed("sample"):
            n_sample = settings.silhouette_sample or _SCATTER_ROWS
            sample_ids, sample_x = data.bounded_sample(prep.df, n_max=n_sample, rows=prep.rows, seed=settings.seed)
        with run.timed("sweep"):
            sweep = run_sweep(
                spark, prep, ks, settings, run,
                sample_ids=sample_ids if settings.silhouette_sample else sample_ids[:0],
                sample_x=sample_x if settings.silhouette_sample else sample_x[:0],
            )
        if not sweep.results:
            raise UserError(f"{source}: no k could be evaluated ({'; '.join(s['reason'] for s in sweep.skipped)})")
        rows = [r.row() for r in sweep.results]
        eligible = [row for row, r in zip(rows, sweep.results, strict=True) if r.note is None]
        choice = choose(eligible)
        if len(eligible) < len(rows):
            choice["explanation"] += (
                " ks where the algorithm returned fewer clusters than asked are not candidates: "
                + ", ".join(str(r.k) for r in sweep.results if r.note is not None) + "."
            )
        best_k = choice["recommended_k"]
        with run.timed("write tables"):
            run.outputs.update(_write_tables(spark, prep, sweep, best_k, settings, out))
        summary = _summary(run, settings, prep, sweep, choice)
        with run.timed("report"):
            labels = sweep.sample_labels.get(best_k) if settings.silhouette_sample else None
            if labels is None and sample_x.shape[0] and best_k in sweep.models:
                labels = predict_sample(sweep.models[best_k], sample_frame(spark, sample_ids, sample_x), sample_ids)
            best = next(r for r in sweep.results if r.k == best_k)
            plots = report.make_plots(rows, choice, sizes=best.cluster_sizes, sample_x=sample_x, sample_labels=labels)
            blocks = report.build(rows=rows, choice=choice, method_seconds=sweep.method_seconds,
                                  method_rows=sweep.method_rows, summary=summary, plots=plots)
            run.outputs.update(report.write_report(out, blocks, plots))
        run.outputs["summary"] = fs.join(out, "summary.json")
        fs.write_text(run.outputs["summary"], json.dumps(summary, indent=2, default=str))
        run.details.update({k: summary[k] for k in ("best_k", "recommended_k", "explanation", "skipped")})
        run.counts["ks_evaluated"] = len(sweep.results)
        run.timings.update({f"method_{m}": s for m, s in sweep.method_seconds.items() if s})
    finally:
        prep.df.unpersist()


def _summary(run: Run, settings: ClusterEvalSettings, prep: data.Prepared, sweep: Sweep,
             choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "dataset": run.details.get("dataset", {}),
        "features": prep.features,
        "scale": settings.scale,
        "scaling": run.details["scaling"],
        "algorithm": settings.algorithm,
        "counts": dict(run.counts),
        "ks": [r.k for r in sweep.results],
        "best_k": choice["best_k"],
        "recommended_k": choice["recommended_k"],
        "votes": choice["votes"],
        "explanation": choice["explanation"],
        "notes": choice["notes"],
        "skipped": sweep.skipped,
        "short_fits": [{"k": r.k, "note": r.note} for r in sweep.results if r.note],
        "gap": sweep.gap_info,
        "method_seconds": sweep.method_seconds,
        "method_rows": sweep.method_rows,
        "warnings": list(run.warnings),
    }


def _write_tables(spark: SparkSession, prep: data.Prepared, sweep: Sweep, best_k: int | None,
                  settings: ClusterEvalSettings, out: str) -> dict[str, str]:
    from pyspark.sql import functions as F

    from pipelines.delta import write_table

    paths = {name: fs.join(out, name) for name in ("metrics", "centers", "assignments")}
    metrics = spark.createDataFrame([tuple(r.row()[c] for c in METRICS_COLUMNS) for r in sweep.results], METRICS_SCHEMA)
    write_table(metrics, paths["metrics"], mode="overwrite")
    centers = [
        (r.k, r.algorithm, i, r.cluster_sizes[i], c.tolist(), prep.to_input_units(c).tolist())
        for r in sweep.results for i, c in enumerate(r.centers)
    ]
    write_table(spark.createDataFrame(centers, CENTERS_SCHEMA), paths["centers"], mode="overwrite")
    ks = sorted(sweep.models) if settings.keep_assignments else [best_k]
    frames: list[DataFrame] = [
        sweep.models[k].transform(prep.df).select(
            data.ROW_ID, F.lit(k).cast("int").alias("k"), F.col("prediction").cast("int").alias("cluster")
        )
        for k in ks
    ]
    assignments = frames[0]
    for f in frames[1:]:
        assignments = assignments.unionByName(f)
    write_table(assignments, paths["assignments"], mode="overwrite", partition_by=["k"])
    return paths
