"""The cluster_eval stage: read, prepare, sweep k, choose, write tables and the report."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipelines import fs
from pipelines.cluster import data, report
from pipelines.cluster.batched import run_batched
from pipelines.cluster.select import choose
from pipelines.cluster.sweep import METRICS_COLUMNS, Sweep, run_sweep
from pipelines.errors import UserError
from pipelines.spark import run_side_by_side

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import ClusterEvalSettings
    from pipelines.engine import Engine
    from pipelines.runs import Run

def _schemas():
    import pyarrow as pa

    from pipelines.engine import spark_schema

    f64, i32, i64 = pa.float64(), pa.int32(), pa.int64()
    metrics = pa.schema([
        ("k", i32), ("algorithm", pa.string()), ("inertia", f64), ("calinski_harabasz", f64), ("davies_bouldin", f64),
        ("silhouette_spark", f64), ("silhouette_sample", f64), ("log_likelihood", f64), ("bic", f64), ("aic", f64),
        ("gap", f64), ("gap_sk", f64), ("n_iter", i32), ("converged", pa.bool_()), ("cluster_sizes", pa.list_(i64)),
        ("fit_seconds", f64), ("eval_seconds", f64),
    ])
    centers = pa.schema([("k", i32), ("algorithm", pa.string()), ("cluster", i32), ("size", i64),
                         ("center", pa.list_(f64)), ("center_input_units", pa.list_(f64))])
    return metrics, centers, spark_schema(metrics).simpleString(), spark_schema(centers).simpleString()


# The tables are built on the driver in Arrow; *_SCHEMA is their Spark DDL (what tests check).
_METRICS_ARROW, _CENTERS_ARROW, METRICS_SCHEMA, CENTERS_SCHEMA = _schemas()
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


def run(spark: SparkSession, settings: ClusterEvalSettings, run: Run) -> None:
    """Run cluster_eval with its ``settings``; fill ``run`` and write everything under its output."""
    out = settings.output
    source = settings.input or "built-in dataset"
    k_values(settings)  # a bad --k fails before the data are read and prepared
    report.preload()
    batched = settings.algorithm == "kmeans"
    with run.timed("prepare"):
        raw = data.read_input(spark, settings, run)
        # the kmeans sweep runs its passes on the driver below summary_rows: so does prepare
        prep = data.prepare(raw, settings, run, source=source,
                            collect_up_to=settings.summary_rows if batched else 0)
    run.counts.update(prep.counts)
    ks = k_values(settings, prep.rows)
    run.details["features"] = prep.features
    run.details["scaling"] = {"method": settings.scale, "scaled": prep.scaled, "constant": prep.constant}
    try:
        with run.timed("sample"):
            # the batched kmeans sweep fits on this sample (its silhouette uses the first rows)
            n_sample = settings.summary_rows if batched else settings.silhouette_sample or _SCATTER_ROWS
            run.progress(f"sample pass: seeded sample of at most {n_sample} of {prep.rows} rows")
            if prep.held is not None:  # every row is on the driver
                sample_ids, sample_x = data.held_sample(prep, n_max=n_sample)
            else:
                sample_ids, sample_x = data.bounded_sample(prep.frame, n_max=n_sample, rows=prep.rows,
                                                           seed=settings.seed, key=prep.sample_key)
        with run.timed("sweep"):
            if batched:
                sweep = run_batched(spark, prep, ks, settings, run, sample_ids=sample_ids, sample_x=sample_x)
            else:
                sweep = run_sweep(spark, prep, ks, settings, run, sample_ids=sample_ids, sample_x=sample_x)
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
        if choice["edge_warning"]:
            run.warn(choice["edge_warning"])
        moving = [r.k for r in sweep.results if r.converged is False]
        if moving:
            run.warn(f"k={', '.join(map(str, moving))} did not converge within max_iter={settings.max_iter} "
                     "passes; their metrics are for the last centres")
        with run.timed("write tables"):
            run.outputs.update(_write_tables(spark, prep, sweep, best_k, settings, out, run.engine))
        summary = _summary(run, settings, prep, sweep, choice)
        with run.timed("report"):
            shown = [k for k in (best_k, choice.get("runner_up")) if k is not None]
            scatter_x = sample_x[:_SCATTER_ROWS]
            scatter = {k: sweep.label_sample(k)[:_SCATTER_ROWS] for k in shown} if scatter_x.shape[0] else {}
            by_k = {r.k: r for r in sweep.results}
            plots = report.make_plots(rows, choice, sizes={k: by_k[k].cluster_sizes for k in shown},
                                      sample_x=scatter_x, sample_labels=scatter)
            blocks = report.build(rows=rows, choice=choice, method_seconds=sweep.method_seconds,
                                  method_rows=sweep.method_rows, summary=summary, plots=plots)
            run.outputs.update(report.write_report(out, blocks, plots))
        run.outputs["summary"] = fs.join(out, "summary.json")
        fs.write_text(run.outputs["summary"], json.dumps(summary, indent=2, default=str))
        run.details.update({k: summary[k] for k in ("best_k", "recommended_k", "explanation", "skipped")})
        run.counts["ks_evaluated"] = len(sweep.results)
        run.timings.update({f"method_{m}": s for m, s in sweep.method_seconds.items() if s})
    finally:
        prep.df.unpersist()  # cached by the MLlib algorithms only


def cluster_profile(prep: data.Prepared, res: Any) -> list[dict[str, Any]]:
    """Size, share and centre in the input's units of every cluster of one k."""
    total = sum(res.cluster_sizes)
    centres = prep.to_input_units(res.centers)
    return [
        {"cluster": i, "size": int(n), "share": n / total if total else 0.0,
         "center": dict(zip(prep.features, (float(v) for v in c), strict=True))}
        for i, (n, c) in enumerate(zip(res.cluster_sizes, centres, strict=True))
    ]


def _summary(run: Run, settings: ClusterEvalSettings, prep: data.Prepared, sweep: Sweep,
             choice: dict[str, Any]) -> dict[str, Any]:
    by_k = {r.k: r for r in sweep.results}
    profiles = {str(k): cluster_profile(prep, by_k[k]) for k in (choice["recommended_k"], choice.get("runner_up"))
                if k is not None}
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
        "runner_up": choice["runner_up"],
        "votes": choice["votes"],
        "explanation": choice["explanation"],
        "notes": choice["notes"],
        "skipped": sweep.skipped,
        "short_fits": [{"k": r.k, "note": r.note} for r in sweep.results if r.note],
        "gap": sweep.gap_info,
        "method_seconds": sweep.method_seconds,
        "method_rows": sweep.method_rows,
        "warnings": list(run.warnings),
        "fit": {"algorithm": settings.algorithm, **sweep.details},
        "profiles": profiles,
    }


def _write_tables(spark: SparkSession, prep: data.Prepared, sweep: Sweep, best_k: int | None,
                  settings: ClusterEvalSettings, out: str, engine: Engine | None) -> dict[str, str]:
    """The ``metrics``, ``centers`` and ``assignments`` tables, written side by side.

    ``metrics`` and ``centers`` are a few rows built on the driver: they are written
    without a Spark job (:func:`pipelines.delta.write_polars`, as the other small
    driver-side tables; a named table still goes through Spark's Delta). ``assignments``
    is written by whoever holds the rows: the driver when its passes ran there, the
    engine's tasks over the input's files, or else Spark from the prepared frame.
    """
    import pyarrow as pa

    from pipelines.delta import write_polars, write_table

    paths = {name: fs.join(out, name) for name in ("metrics", "centers", "assignments")}

    def arrow(rows: list[tuple], schema: pa.Schema) -> pa.Table:
        return pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema)

    metrics = arrow([tuple(r.row()[c] for c in METRICS_COLUMNS) for r in sweep.results], _METRICS_ARROW)
    centers = arrow([
        (r.k, r.algorithm, i, r.cluster_sizes[i], c.tolist(), prep.to_input_units(c).tolist())
        for r in sweep.results for i, c in enumerate(r.centers)
    ], _CENTERS_ARROW)
    ks = [r.k for r in sweep.results] if settings.keep_assignments else [best_k]
    calls = [(write_polars, (table, paths[name]), {"mode": "overwrite"})
             for name, table in (("metrics", metrics), ("centers", centers))]
    writer = sweep.write_assignments
    direct = writer is not None and (sweep.assignments_on_driver
                                     or data.pass_engine(engine, spark).reads_files(paths["assignments"]))
    if direct:
        calls.append((writer, (ks, paths["assignments"]), {}))
    else:
        calls.append((write_table, (sweep.assignments(ks), paths["assignments"]), {"mode": "overwrite",
                                                                                    "partition_by": ["k"]}))
    # Three independent tables: their commits (and the assignments' Spark job) run side by side.
    run_side_by_side(spark, calls)
    return paths
