"""jobs/cluster_eval end to end: the default dataset, outputs and their schemas, bad input."""

from __future__ import annotations

import json
import math

import pytest
from chispa.schema_comparer import assert_schema_equality

from jobs.cluster_eval import main
from pipelines.cluster.run import CENTERS_SCHEMA, METRICS_SCHEMA


def run_job(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1]) if captured.out.strip() else None
    return code, captured.err, summary


@pytest.fixture(scope="module")
def default_run(spark, tmp_path_factory):
    """The built-in dataset, k = 2..6 and a smaller silhouette sample to keep the suite quick."""
    out = tmp_path_factory.mktemp("cluster_eval") / "out"
    code = main(["--output", str(out), "--k-max", "6", "--silhouette-sample", "3000"])
    runs = list((out / "_runs").glob("*.json"))
    return code, out, json.loads(runs[0].read_text())


def test_default_dataset_recommends_the_true_k(default_run):
    code, out, run = default_run
    assert code == 0, run["error"]
    assert run["dataset"]["true_k"] == 4
    assert run["recommended_k"] == 4
    assert run["best_k"]["calinski_harabasz"] == 4 and run["best_k"]["davies_bouldin"] == 4
    assert run["best_k"]["silhouette_sample"] == 4 and run["best_k"]["elbow"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommended_k"] == 4 and summary["counts"]["rows_used"] == 20000
    assert summary["explanation"].startswith("All 4 voting methods agree on k=4")
    assert summary["fit"]["summary_rows"] == 20000 and summary["fit"]["silhouette_sample_rows"] == 3000
    assert not any("edge" in w or "widen" in w for w in summary["warnings"])


def test_profiles_are_in_input_units(spark, default_run):
    from pipelines.cluster.data import DEFAULT_DIMS, DEFAULT_K, DEFAULT_SEED, blob_centers

    _, out, _ = default_run
    summary = json.loads((out / "summary.json").read_text())
    runner_up = summary["runner_up"]
    assert runner_up is not None and runner_up != 4 and set(summary["profiles"]) == {"4", str(runner_up)}
    prof = summary["profiles"]["4"]
    assert sum(c["size"] for c in prof) == 20000 and sum(c["share"] for c in prof) == pytest.approx(1.0)
    truth = blob_centers(DEFAULT_K, DEFAULT_DIMS, seed=DEFAULT_SEED)
    found = [list(c["center"].values()) for c in prof]
    # each cluster's centre is a different true blob centre (blob std <= 1.1, ~5000 rows each)
    dist = [[float(sum((a - b) ** 2 for a, b in zip(t, c, strict=True)) ** 0.5) for t in truth] for c in found]
    assert sorted(min(range(DEFAULT_K), key=row.__getitem__) for row in dist) == list(range(DEFAULT_K))
    assert max(min(row) for row in dist) < 0.1


def test_outputs_have_the_documented_schema(spark, default_run):
    from pyspark.sql.types import _parse_datatype_string

    from pipelines.delta import read_table

    _, out, _ = default_run
    metrics = read_table(spark, str(out / "metrics"))
    assert_schema_equality(metrics.schema, _parse_datatype_string(METRICS_SCHEMA), ignore_nullable=True)
    assert [r["k"] for r in metrics.orderBy("k").collect()] == [2, 3, 4, 5, 6]
    row = metrics.filter("k = 4").first()
    assert sum(row["cluster_sizes"]) == 20000 and row["log_likelihood"] is None and row["gap"] is None
    centers = read_table(spark, str(out / "centers"))
    assert_schema_equality(centers.schema, _parse_datatype_string(CENTERS_SCHEMA), ignore_nullable=True)
    assert centers.count() == 2 + 3 + 4 + 5 + 6
    assignments = read_table(spark, str(out / "assignments"))
    assert_schema_equality(
        assignments.select("_row_id", "k", "cluster").schema,
        _parse_datatype_string("_row_id bigint, k int, cluster int"),
        ignore_nullable=True,
    )
    assert assignments.count() == 20000 and assignments.select("_row_id").distinct().count() == 20000
    assert {r["k"] for r in assignments.select("k").distinct().collect()} == {4}


def test_report_and_plots_exist(default_run):
    _, out, _ = default_run
    names = ["inertia", "calinski_harabasz", "davies_bouldin", "silhouette", "cluster_sizes", "pca_scatter",
             "cluster_sizes_runner_up", "pca_scatter_runner_up"]
    for name in names:
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "report.md").read_text()
    assert "## Recommendation: k = 4" in md and "Methods compared" in md and "![Calinski-Harabasz](plots/" in md
    assert "### Clusters at the recommended k = 4 (centres in the input's units)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names) and "src='plots/" not in html
    assert "<td style='text-align:left'>" in html


@pytest.fixture(scope="module")
def small_input(spark, tmp_path_factory):
    """600 rows, 3 blobs, plus a constant column, a string column and rows with null/NaN/inf."""
    from pipelines.cluster.data import make_blobs

    root = tmp_path_factory.mktemp("inputs")
    df = make_blobs(spark, rows=600, k=3, dims=2, seed=9, partitions=2)
    from pyspark.sql import functions as F

    df = df.withColumn("flat", F.lit(5.0)).withColumn("name", F.concat(F.lit("r"), F.col("_row_id").cast("string")))
    df = df.withColumn("x0", F.when(F.col("_row_id") == 3, F.lit(None)).when(F.col("_row_id") == 4, F.lit(float("nan")))
                       .when(F.col("_row_id") == 5, F.lit(float("inf"))).otherwise(F.col("x0")))
    df.write.parquet(str(root / "blobs.parquet"))
    df.filter("false").write.parquet(str(root / "empty.parquet"))
    df.filter("_row_id < 40").select("_row_id", F.lit(1.0).alias("a"), (F.col("_row_id") % 2).cast("double").alias("b")) \
        .write.parquet(str(root / "two_points.parquet"))
    return root


def test_bad_rows_constant_feature_gmm_and_gap(small_input, tmp_path, capsys):
    code, err, run = run_job(
        capsys, "--input", str(small_input / "blobs.parquet"), "--features", "x0,x1,flat", "--k", "2,3,4",
        "--gmm", "--gap", "2", "--gap-sample", "300", "--silhouette-sample", "200", "--output", str(tmp_path),
    )
    assert code == 0, err
    assert run["counts"]["rows_input"] == 600 and run["counts"]["rows_excluded"] == 3
    assert run["counts"]["rows_used"] == 597 and run["counts"]["values_invalid"] == {"x0": 3}
    assert any("feature 'flat' is constant" in w for w in run["warnings"])
    assert run["scaling"]["scaled"] == ["x0", "x1"]
    assert run["best_k"]["calinski_harabasz"] == 3 and run["best_k"]["bic"] is not None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gap"]["sampled"] is True and summary["gap"]["reference_sets"] == 2
    assert "(SAMPLED)" in (tmp_path / "report.md").read_text()
    from pyspark.sql import SparkSession

    from pipelines.delta import read_table

    rows = read_table(SparkSession.getActiveSession(), str(tmp_path / "metrics")).orderBy("k").collect()
    for r in rows:
        assert math.isfinite(r["bic"]) and math.isfinite(r["aic"]) and math.isfinite(r["gap"]) and r["gap_sk"] >= 0


def test_impute_mean_keeps_every_row_with_mllib(small_input, tmp_path, capsys):
    code, err, run = run_job(
        capsys, "--input", str(small_input / "blobs.parquet"), "--features", "x0,x1", "--k", "3",
        "--impute", "mean", "--silhouette-sample", "0", "--algorithm", "spark-kmeans", "--output", str(tmp_path),
    )
    assert code == 0, err
    assert run["counts"]["rows_used"] == 600 and run["counts"]["rows_imputed"] == 3


def test_recommendation_at_the_edge_warns(small_input, tmp_path, capsys):
    code, err, run = run_job(
        capsys, "--input", str(small_input / "blobs.parquet"), "--features", "x0,x1", "--k", "2,3",
        "--silhouette-sample", "0", "--output", str(tmp_path),
    )
    assert code == 0, err
    assert run["recommended_k"] == 3
    warning = "the recommended k=3 is the largest k evaluated (2..3); widen the range"
    assert any(warning in w for w in run["warnings"])
    assert warning in (tmp_path / "report.md").read_text()


def test_fewer_distinct_points_than_k_is_skipped_with_reason(small_input, tmp_path, capsys):
    code, err, run = run_job(
        capsys, "--input", str(small_input / "two_points.parquet"), "--k", "2,3", "--scale", "none",
        "--silhouette-sample", "0", "--output", str(tmp_path),
    )
    assert code == 0, err
    assert run["skipped"] == [{"k": 3, "reason": "fewer distinct points (2) than k=3"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--features", "x0,name"], "feature column 'name' is string, not numeric"),
        (["--features", "x0,nope"], "feature column 'nope' not found"),
        (["--k-min", "5", "--k-max", "3"], "'cluster_eval.k_max' (3) must be >= 'cluster_eval.k_min' (5)"),
        (["--k", "1,3"], "cluster_eval.k: every k must be >= 2"),
        (["--k", "600"], "cluster_eval.k: k=600 must be smaller than the number of rows used (597)"),
    ],
)
def test_bad_input_exits_2_with_one_line(small_input, tmp_path, capsys, args, message):
    code, err, _ = run_job(capsys, "--input", str(small_input / "blobs.parquet"), *args, "--output", str(tmp_path))
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_empty_and_missing_input_exit_2(small_input, tmp_path, capsys):
    code, err, _ = run_job(capsys, "--input", str(small_input / "empty.parquet"), "--output", str(tmp_path))
    assert code == 2 and "input has no rows" in err
    code, err, _ = run_job(capsys, "--input", str(small_input / "missing"), "--output", str(tmp_path))
    assert code == 2 and "missing: input not found" in err
