"""The gmm_transform stage and job: both engines and the mapInArrow path, Delta in and out, bad input."""

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
from pipelines.engine import arrow_schema, spark_map
from pipelines.gmm import kernels as K

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


def _read(spark, path):
    return delta.read_table(spark, str(path))


def _config(tmp, spark_path: str) -> str:
    path = tmp / f"engine_{spark_path}.yaml"
    path.write_text(f"engine:\n  spark_path: {spark_path}\n")
    return str(path)


def _split(spark, data, n: int) -> str:
    """The bronze rows as a Delta table of ``n`` files (one commit per slice)."""
    path = str(data / f"bronze_{n}")
    if not delta.table_exists(path):
        frame = synthetic(N_ROWS)
        for i, part in enumerate(np.array_split(np.arange(N_ROWS), n)):
            delta.write_polars(frame[part], path, mode="overwrite" if i == 0 else "append")
    assert len(delta._open(path).file_uris()) == n
    return path


@pytest.fixture(scope="module")
def reference(spark, data):
    """The mapInArrow path (the Spark engine before files were scheduled), 1 input file, every layout + inverse."""
    cfg = _config(data, "mapInArrow")
    fit, out = str(data / "fit"), {}
    for layout in ("wide", "onehot", "long"):
        out[layout] = str(data / f"ref_{layout}")
        argv = ["--config", cfg, "--fit-dir", fit, "--input", _split(spark, data, 1), "--output", out[layout], "--layout", layout]
        assert job_main(argv) == 0
        if layout != "long":
            back = ["--config", cfg, "--inverse", "--fit-dir", fit, "--input", f"{out[layout]}/transformed_values",
                    "--output", f"{out[layout]}/back"]
            assert job_main(back) == 0
    runs = sorted(Path(out["wide"], "_runs").glob("*.json"))
    assert json.loads(runs[0].read_text())["engine"]["steps"]["transform"]["path"] == "mapInArrow"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["spark", "local"])
@pytest.mark.parametrize("n_files", [1, 3, 7])
def test_outputs_identical_across_engines_and_input_files(spark, data, reference, engine, n_files, capsys):
    fit, source = str(data / "fit"), _split(spark, data, n_files)
    for layout in ("wide", "onehot", "long"):
        out = str(data / f"{engine}_{n_files}_{layout}")
        code, summary, _ = _run(job_main, ["--engine", engine, "--fit-dir", fit, "--input", source, "--output", out,
                                           "--layout", layout], capsys)
        assert code == 0
        steps = summary["engine"]["steps"]
        assert summary["engine"]["name"] == engine and steps["transform"] == {
            "path": "files", "units": n_files, "rows": N_ROWS, "polars_threads": steps["transform"]["polars_threads"]}
        tables = ["feature_values"] if layout == "long" else ["transformed_values", "feature_values"]
        for table in tables:
            assert_df_equality(_read(spark, f"{out}/{table}"), _read(spark, f"{reference[layout]}/{table}"),
                               ignore_row_order=True, ignore_nullable=True)
        if layout == "long":
            continue
        code, back, _ = _run(job_main, ["--engine", engine, "--inverse", "--fit-dir", fit, "--input",
                                        f"{out}/transformed_values", "--output", f"{out}/back"], capsys)
        assert code == 0 and back["counts"]["rows"] == N_ROWS
        assert_df_equality(_read(spark, f"{out}/back/inverted_values"), _read(spark, f"{reference[layout]}/back/inverted_values"),
                           ignore_row_order=True, ignore_nullable=True)


def test_local_engine_summary_equals_the_spark_engine_summary(data, spark_run, capsys):
    out = str(data / "local")
    code, summary, _ = _run(job_main, ["--engine", "local", "--fit-dir", str(data / "fit"), "--input", str(data / "bronze"),
                                       "--output", out], capsys)
    assert code == 0
    for key in ("counts", "columns", "max_abs_error", "layout"):
        assert summary[key] == spark_run[1][key]


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


def test_seed_changes_the_sampled_modes_only(spark, data):
    plans = [K.plan_column(m) for m in all_models()]
    source = _read(spark, data / "bronze").select("_row_id", "amount", "bimodal", "mixed", "cat")
    schema = arrow_schema({"_row_id": pl.Int64, "amount": pl.Float64, "amount__component": pl.Int32})

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


@pytest.mark.parametrize("engine", ["spark", "polars"])
def test_round_trip_through_delta_is_exact(spark, data, spark_run, engine, capsys):
    back = str(data / f"back_{engine}")
    code, summary, _ = _run(job_main, ["--inverse", "--engine", engine, "--fit-dir", str(data / "fit"),
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


def test_local_engine_job_runs_without_spark(data):
    out = str(data / "cli")
    probe = (
        "import runpy, sys\n"
        f"sys.argv[0] = {str(ROOT / 'jobs' / 'gmm_transform.py')!r}\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    assert 'pyspark' not in sys.modules, 'the local engine imported pyspark'\n"
    )
    argv = ["--engine", "local", "--fit-dir", str(data / "fit"), "--input", str(data / "bronze"), "--output", out]
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


@pytest.mark.parametrize("engine", ["spark", "local"])
def test_missing_fit_column_exits_2_naming_it(spark, data, engine, capsys):
    path = str(data / f"no_bimodal_{engine}")
    delta.write_polars(synthetic(50).drop("bimodal"), path, mode="overwrite")
    line = _bad(job_main, ["--engine", engine, "--fit-dir", str(data / "fit"), "--input", path,
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
