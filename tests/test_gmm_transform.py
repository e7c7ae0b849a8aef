"""The gmm_transform stage and job: Spark and Polars engines, Delta in and out, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from chispa import assert_df_equality
from gmm_transform_data import all_models, synthetic, write_fit

from jobs.gmm_transform import main as job_main
from pipelines import delta
from pipelines.gmm import kernels as K
from pipelines.gmm.transform import main as polars_main
from pipelines.partitions import spark_map

N_ROWS = 3000
ROOT = Path(__file__).resolve().parents[1]


def _run(main, argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmm_transform")
    write_fit(str(root / "fit"), all_models())
    delta.write_polars(synthetic(N_ROWS), str(root / "bronze"), mode="overwrite")
    return root


@pytest.fixture(scope="module")
def spark_run(spark, data):
    out = str(data / "spark")
    code = job_main(["--fit-dir", str(data / "fit"), "--input", str(data / "bronze"), "--output", out])
    assert code == 0
    summary = json.loads(Path(out, "_runs").glob("*.json").__next__().read_text())
    return out, summary


@pytest.fixture(scope="module")
def polars_run(data):
    out = str(data / "polars")
    code = polars_main(["--engine", "polars", "--fit-dir", str(data / "fit"), "--input", str(data / "bronze"), "--output", out])
    assert code == 0
    summary = json.loads(Path(out, "_runs").glob("*.json").__next__().read_text())
    return out, summary


def _read(spark, path):
    return delta.read_table(spark, str(path))


def test_spark_and_polars_engines_write_identical_tables(spark, spark_run, polars_run):
    for table in ("transformed_values", "feature_values"):
        assert_df_equality(_read(spark, f"{spark_run[0]}/{table}"), _read(spark, f"{polars_run[0]}/{table}"),
                           ignore_row_order=True, ignore_nullable=True)
    for key in ("counts", "columns", "max_abs_error"):
        assert spark_run[1][key] == polars_run[1][key]


def test_outputs_have_the_documented_shape(spark, spark_run):
    out, summary = spark_run
    wide = _read(spark, f"{out}/transformed_values")
    assert wide.columns == ["_row_id", "amount", "amount__component", "amount__null", "bimodal", "bimodal__component",
                            "bimodal__null", "mixed", "mixed__component", "mixed__null", "cat__component"]
    assert wide.count() == N_ROWS and wide.select("_row_id").distinct().count() == N_ROWS
    long = _read(spark, f"{out}/feature_values")
    assert sorted(long.columns) == sorted(["column", "_row_id", "normalized", "component_rank", "is_null"])
    assert delta._open(f"{out}/feature_values").metadata().partition_columns == ["column"]
    per_column = {r["column"]: r["count"] for r in long.groupBy("column").count().collect()}
    assert per_column == {"amount": N_ROWS, "bimodal": N_ROWS, "mixed": N_ROWS, "cat": N_ROWS}
    assert summary["outputs"] == {"transformed_values": f"{out}/transformed_values", "feature_values": f"{out}/feature_values"}


def test_summary_counts_clipped_nonfinite_and_unknown(spark_run):
    summary = spark_run[1]
    amount, mixed, cat = (summary["columns"][c] for c in ("amount", "mixed", "cat"))
    # synthetic(): amount has a null, NaN, +inf and a 1e7 extreme; mixed a -inf; cat "zzz" and a null
    assert (amount["null_or_nonfinite"], amount["nonfinite"], amount["clipped"]) == (3, 2, 1)
    assert amount["clip_fraction"] == pytest.approx(1 / N_ROWS)
    assert amount["max_abs_error"] > 1e6 and amount["max_abs_error_unclipped"] < 1e-9
    assert (mixed["null_or_nonfinite"], mixed["nonfinite"]) == (1, 1)
    assert (cat["unknown"], cat["null"]) == (1, 1)
    assert summary["counts"]["unknown_categories"] == 1 and summary["counts"]["rows"] == N_ROWS
    assert any("cat: 1 row(s)" in w for w in summary["warnings"])


def test_one_and_seven_partitions_give_identical_outputs(spark, data):
    bronze = _read(spark, data / "bronze")
    outputs = []
    # A high open cost per file keeps Spark from packing the small files into fewer partitions.
    previous = spark.conf.get("spark.sql.files.openCostInBytes")
    spark.conf.set("spark.sql.files.openCostInBytes", str(256 << 20))
    try:
        for n in (1, 7):
            path = str(data / f"bronze_{n}")
            delta.write_table(bronze.repartition(n, "_row_id"), path, mode="overwrite")
            assert _read(spark, path).rdd.getNumPartitions() == n
            out = str(data / f"out_{n}")
            assert job_main(["--fit-dir", str(data / "fit"), "--input", path, "--output", out, "--seed", "5"]) == 0
            outputs.append(out)
    finally:
        spark.conf.set("spark.sql.files.openCostInBytes", previous)
    for table in ("transformed_values", "feature_values"):
        assert_df_equality(_read(spark, f"{outputs[0]}/{table}"), _read(spark, f"{outputs[1]}/{table}"),
                           ignore_row_order=True, ignore_nullable=True)


def test_seed_changes_the_sampled_modes_only(spark, data):
    plans = [K.plan_column(m) for m in all_models()]
    source = _read(spark, data / "bronze").select("_row_id", "amount", "bimodal", "mixed", "cat")
    schema = "_row_id long, amount double, amount__component int"

    def encoded(seed):
        def kernel(b):
            return K.encode(b, plans, seed=seed).select("_row_id", "amount", "amount__component")
        frame = spark_map(source, kernel, schema).orderBy("_row_id").toPandas()  # 3000 rows: a test
        return frame["amount"].to_numpy(), frame["amount__component"].to_numpy()

    (z1, r1), (z2, r2) = encoded(1), encoded(2)
    moved = r1 != r2
    assert 0 < moved.mean() < 0.5
    np.testing.assert_array_equal(z1[~moved], z2[~moved])  # same mode, same normalised value
    unclipped = moved & (np.abs(z1) < 0.99) & (np.abs(z2) < 0.99)
    assert np.all(z1[unclipped] != z2[unclipped])


@pytest.mark.parametrize("engine_main, engine", [(job_main, "spark"), (polars_main, "polars")])
def test_round_trip_through_delta_is_exact(spark, data, spark_run, engine_main, engine, capsys):
    back = str(data / f"back_{engine}")
    code, summary, _ = _run(engine_main, ["--inverse", "--engine", engine, "--fit-dir", str(data / "fit"),
                                          "--input", f"{spark_run[0]}/transformed_values", "--output", back], capsys)
    assert code == 0 and summary["layout"] == "wide" and summary["counts"]["rows"] == N_ROWS
    got = delta.scan_table(f"{back}/inverted_values").collect().sort("_row_id")
    assert got.columns == ["_row_id", "amount", "bimodal", "mixed", "cat"]
    src = synthetic(N_ROWS).sort("_row_id")
    flags = K.encode(src, [K.plan_column(m) for m in all_models()], seed=42)
    for c in ("amount", "bimodal", "mixed"):
        x, y = src[c].to_numpy(), got[c].to_numpy()
        ok = np.isfinite(x) & ~flags[K.flag_name("clipped", c)].to_numpy()
        assert ok.sum() >= N_ROWS - 4
        # relative 1e-12, against |x| or, for |x| < 4 (the narrowest mode's width 4*sigma), against 4
        assert np.all(np.abs(y[ok] - x[ok]) <= 1e-12 * np.maximum(np.abs(x[ok]), 4.0))
        assert got[c].is_null().to_list() == (~np.isfinite(src[c].fill_null(np.nan).to_numpy())).tolist()
    known = src["cat"] != "zzz"
    assert got["cat"].filter(known.fill_null(True)).to_list() == src["cat"].filter(known.fill_null(True)).to_list()


def test_onehot_and_long_layouts(spark, data, spark_run, capsys):
    fit, bronze = str(data / "fit"), str(data / "bronze")
    onehot = str(data / "onehot")
    code, summary, _ = _run(job_main, ["--fit-dir", fit, "--input", bronze, "--output", onehot, "--layout", "onehot"], capsys)
    assert code == 0
    cols = _read(spark, f"{onehot}/transformed_values").columns
    assert ["amount__0", "amount__1", "amount__2"] == [c for c in cols if c.startswith("amount__") and c[-1].isdigit()]
    assert "cat__unknown" in cols and "amount__component" not in cols
    # same seed: the long table is the same whatever the layout
    assert_df_equality(_read(spark, f"{onehot}/feature_values"), _read(spark, f"{spark_run[0]}/feature_values"),
                       ignore_row_order=True, ignore_nullable=True)
    back = str(data / "back_onehot")
    code, summary, _ = _run(job_main, ["--inverse", "--fit-dir", fit, "--input", f"{onehot}/transformed_values",
                                       "--output", back], capsys)
    assert code == 0 and summary["layout"] == "onehot"
    assert_df_equality(_read(spark, f"{back}/inverted_values"), _read(spark, f"{data}/back_spark/inverted_values"),
                       ignore_row_order=True, ignore_nullable=True)

    long = str(data / "long")
    code, summary, _ = _run(job_main, ["--fit-dir", fit, "--input", bronze, "--output", long, "--layout", "long"], capsys)
    assert code == 0 and list(summary["outputs"]) == ["feature_values"]
    assert not delta.table_exists(f"{long}/transformed_values")
    assert_df_equality(_read(spark, f"{long}/feature_values"), _read(spark, f"{spark_run[0]}/feature_values"),
                       ignore_row_order=True, ignore_nullable=True)
    assert summary["columns"] == spark_run[1]["columns"]


def test_polars_module_entry_runs_without_spark(data):
    out = str(data / "cli")
    probe = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('pipelines.gmm.transform', run_name='__main__')\n"
        "finally:\n"
        "    assert 'pyspark' not in sys.modules, 'the polars engine imported pyspark'\n"
    )
    argv = ["--engine", "polars", "--fit-dir", str(data / "fit"), "--input", str(data / "bronze"), "--output", out]
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["counts"]["rows"] == N_ROWS
    assert delta.table_exists(f"{out}/feature_values")


# --------------------------------------------------------------------------- bad input


def _bad(main, argv, capsys):
    code, summary, err = _run(main, argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert summary["status"] == "failed"
    return lines[0]


@pytest.mark.parametrize("engine_main, engine", [(job_main, "spark"), (polars_main, "polars")])
def test_missing_fit_column_exits_2_naming_it(spark, data, engine_main, engine, capsys):
    path = str(data / f"no_bimodal_{engine}")
    delta.write_polars(synthetic(50).drop("bimodal"), path, mode="overwrite")
    line = _bad(engine_main, ["--engine", engine, "--fit-dir", str(data / "fit"), "--input", path,
                              "--output", str(data / "x")], capsys)
    assert "'bimodal'" in line and "missing from the input" in line and path in line


@pytest.mark.parametrize(
    "frame, expected",
    [
        (synthetic(50).with_columns(pl.col("amount").cast(pl.String)), "'amount' is continuous in the fit but has type"),
        (synthetic(50).drop("_row_id"), "'_row_id'"),
    ],
)
def test_bad_input_types_exit_2(spark, data, frame, expected, capsys):
    path = str(data / "bad_types")
    delta.write_polars(frame, path, mode="overwrite")
    assert expected in _bad(job_main, ["--fit-dir", str(data / "fit"), "--input", path, "--output", str(data / "x")], capsys)


def test_missing_fit_dir_and_input_exit_2(spark, data, capsys):
    line = _bad(job_main, ["--fit-dir", str(data / "nofit"), "--input", str(data / "bronze"), "--output", str(data / "x")], capsys)
    assert f"{data / 'nofit'}/models" in line
    line = _bad(job_main, ["--fit-dir", str(data / "fit"), "--input", str(data / "nothing"), "--output", str(data / "x")], capsys)
    assert f"{data / 'nothing'}: input not found" in line


def test_inverse_input_missing_a_column_exits_2(spark, data, spark_run, capsys):
    path = str(data / "bad_inverse")
    wide = delta.scan_table(f"{spark_run[0]}/transformed_values").collect().drop("mixed__null")
    delta.write_polars(wide, path, mode="overwrite")
    line = _bad(job_main, ["--inverse", "--fit-dir", str(data / "fit"), "--input", path, "--output", str(data / "x")], capsys)
    assert "'mixed__null'" in line and "wide layout" in line
