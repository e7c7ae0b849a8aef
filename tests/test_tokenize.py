"""The tokenize job end to end on the session's local Spark: references are numpy."""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
import polars as pl
import pytest
from chispa import assert_df_equality

from jobs.tokenize_job import main
from pipelines import delta
from pipelines.tokenize import fit_edges
from pipelines.tokenize import kernels as K

COLUMNS = ["a", "b", "c"]


def _source_frame(n: int, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.lognormal(size=n)
    a[rng.choice(n, 40, replace=False)] = np.nan
    b = np.round(rng.normal(size=n), 1)  # few distinct values: heavy ties
    c = rng.integers(-1000, 1000, size=n).astype(np.int32)
    return pl.DataFrame(
        {"_row_id": np.arange(n, dtype=np.int64), "a": a, "b": b, "c": c},
        schema={"_row_id": pl.Int64, "a": pl.Float64, "b": pl.Float64, "c": pl.Int32},
    ).with_columns(pl.when(pl.col("_row_id") % 97 == 5).then(None).otherwise(pl.col("b")).alias("b"))


@pytest.fixture(scope="module")
def source(spark, tmp_path_factory):
    """The same 6000 rows as one file, 3 files and 7 files."""
    root = tmp_path_factory.mktemp("tokenize_src")
    frame = _source_frame(6000)
    one = str(root / "one")
    delta.write_polars(frame, one, mode="overwrite")
    out = {"frame": frame, "one": one}
    for name, n in (("three", 3), ("seven", 7)):
        out[name] = str(root / name)
        delta.write_table(delta.read_table(spark, one).repartition(n), out[name], mode="overwrite")
        assert len(delta._open(out[name]).file_uris()) == n
    assert delta.read_table(spark, one).rdd.getNumPartitions() == 1
    return out


@contextlib.contextmanager
def _file_per_partition(spark):
    """One read partition per file: Spark otherwise packs small files into one partition."""
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    old = {k: spark.conf.get(k) for k in keys}
    for k in keys:
        spark.conf.set(k, "1m")  # every file costs a whole partition; none is split
    try:
        yield
    finally:
        for k, v in old.items():
            spark.conf.set(k, v)


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), captured.err


@pytest.fixture(scope="module")
def runs(spark, source, tmp_path_factory):
    """Tokenise and detokenise: the mapInArrow path on 1 file (the reference), and both engines on 1, 3 and 7 files.

    relative_error * rows = 0.3 < 1/2: the quantile sketch keeps every rank exactly, so
    the edges are exact and cannot depend on the partitioning (see pipelines.tokenize.stage).
    """
    root = tmp_path_factory.mktemp("tokenize_out")
    arrow = root / "mapInArrow.yaml"
    arrow.write_text("engine:\n  spark_path: mapInArrow\n")
    cases = {"ref": ("one", "spark", ["--config", str(arrow)]), "one": ("one", "spark", [])}
    cases.update({f"{engine}_{table}": (table, engine, []) for engine in ("spark", "local") for table in ("one", "three", "seven")})
    out = {}
    for name, (table, engine, extra) in cases.items():
        argv = ["--input", source[table], "--columns", ",".join(COLUMNS), "--output", str(root / name), "--bins", "32",
                "--relative-error", "5e-5", "--engine", engine, *extra]
        with _file_per_partition(spark) if table != "one" else contextlib.nullcontext():
            assert main(argv) == 0
        back = ["--detokenize", "--tokenizer", str(root / name / "tokenizer"), "--input", str(root / name / "tokens"),
                "--output", str(root / name / "back"), "--engine", engine, *extra]
        assert main(back) == 0
        out[name] = root / name
    return out


def _summary(path) -> dict:
    files = sorted((path / "_runs").glob("*.json"))
    return [json.loads(f.read_text()) for f in files]


def test_edges_match_numpy_quantile_within_the_rank_error(spark):
    from pyspark.sql import functions as F

    df = spark.range(10000, numPartitions=3).select("id", (F.exp(F.randn(seed=11)) * 10).alias("x"))
    x = np.array([r.x for r in df.collect()])  # 10000 test values: the numpy reference needs them all
    probs = np.array(K.quantile_probabilities(50))
    eps = 0.01
    (bins,), info = fit_edges(df, ["x"], n_bins=50, method="quantile", relative_error=eps)
    inner = bins.edges[1:-1]
    assert bins.edges[0] == x.min() and bins.edges[-1] == x.max()
    assert inner.size == 49 and info["x"]["rank_error"] == pytest.approx(eps * 10000)
    low = np.quantile(x, np.clip(probs - eps, 0, 1), method="inverted_cdf")
    high = np.quantile(x, np.clip(probs + eps, 0, 1), method="inverted_cdf")
    assert np.all((inner >= low) & (inner <= high))
    assert not np.array_equal(inner, np.quantile(x, probs, method="inverted_cdf"))  # really approximate
    assert np.all(np.isin(inner, x))  # edges are values of the column
    # with relative_error * n well below 1/2 the edges are the exact inverted-CDF quantiles
    small = df.filter(F.col("id") < 2000)
    (exact,), _ = fit_edges(small, ["x"], n_bins=50, method="quantile", relative_error=1e-4)
    sample = np.array([r.x for r in small.collect()])
    np.testing.assert_array_equal(exact.edges[1:-1], np.quantile(sample, probs, method="inverted_cdf"))


def test_tokens_agree_with_numpy_searchsorted_on_every_row(source, runs):
    frame = source["frame"]
    tokenizer = delta.scan_table(str(runs["one"] / "tokenizer")).collect()
    tokens = delta.scan_table(str(runs["one"] / "tokens")).collect().sort("_row_id")
    assert tokens.schema == pl.Schema({"_row_id": pl.Int64, "a": pl.Int8, "b": pl.Int8, "c": pl.Int8})
    assert tokens["_row_id"].to_list() == frame["_row_id"].to_list()
    for name in COLUMNS:
        t = tokenizer.filter(pl.col("column") == name).sort("bin")
        edges = np.append(t["lower"].to_numpy(), t["upper"][-1])
        n = int(t["n_bins"][0])
        x = frame[name].cast(pl.Float64).to_numpy()
        expected = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n - 1)
        expected[np.isnan(x)] = n + 1
        expected[frame[name].is_null().to_numpy()] = n
        np.testing.assert_array_equal(tokens[name].to_numpy(), expected)


def test_tokenizer_table_and_summary(source, runs):
    frame = source["frame"]
    tokenizer = delta.scan_table(str(runs["one"] / "tokenizer")).collect()
    assert tokenizer.columns == ["column", "bin", "lower", "upper", "mean", "count", "method", "n_bins"]
    (summary,) = _summary(runs["one"])
    assert summary["status"] == "succeeded" and summary["counts"]["rows"] == 6000
    for name in COLUMNS:
        t = tokenizer.filter(pl.col("column") == name).sort("bin")
        info = summary["columns"][name]
        assert info["effective_bins"] == t.height == t["n_bins"][0]
        assert info["collapsed_edges"] == 32 - t.height
        x = frame[name].cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
        assert t["count"].sum() == x.size == info["finite"]
        edges = np.append(t["lower"].to_numpy(), t["upper"][-1])
        bin_of = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, t.height - 1)
        np.testing.assert_array_equal(t["count"].to_numpy(), np.bincount(bin_of, minlength=t.height))
        # fixed-point sums resolve a mean to 2**-33 of its bin width
        error = np.abs(t["mean"].to_numpy() - [x[bin_of == i].mean() for i in range(t.height)])
        assert np.all(error <= np.diff(edges) * 2.0**-32 + 1e-15 * np.abs(edges[1:]))
        assert info["out_of_range"] == {"below": 0, "above": 0}
    # b has ~40 distinct values for 32 requested bins: ties collapse edges, and that is reported
    assert summary["columns"]["b"]["collapsed_edges"] > 0
    assert any("'b'" in w and "collapsed" in w for w in summary["warnings"])
    assert summary["columns"]["a"]["reserved_tokens"] == {"null": 0, "nan": 40, "neg_inf": 0, "pos_inf": 0}
    assert summary["columns"]["b"]["reserved_tokens"]["null"] == int(frame["b"].is_null().sum())


def test_round_trip_rmse_matches_numpy_and_means_beat_centres(source, runs):
    frame = source["frame"]
    (summary,) = _summary(runs["one"])
    back = delta.scan_table(str(runs["one"] / "back" / "detokenized")).collect().sort("_row_id")
    tokenizer = delta.scan_table(str(runs["one"] / "tokenizer")).collect()
    for name in COLUMNS:
        x = frame[name].cast(pl.Float64).to_numpy()
        finite = np.isfinite(x)
        rmse_mean = math.sqrt(np.mean((x[finite] - back[name].to_numpy()[finite]) ** 2))
        t = tokenizer.filter(pl.col("column") == name).sort("bin")
        edges = np.append(t["lower"].to_numpy(), t["upper"][-1])
        tok = np.clip(np.searchsorted(edges, x[finite], side="right") - 1, 0, t.height - 1)
        rmse_centre = math.sqrt(np.mean((x[finite] - ((edges[:-1] + edges[1:]) / 2)[tok]) ** 2))
        info = summary["columns"][name]
        assert info["rmse_mean"] == pytest.approx(rmse_mean, rel=1e-9)
        assert info["rmse_centre"] == pytest.approx(rmse_centre, rel=1e-9)
        assert info["rmse_mean"] <= info["rmse_centre"]
    assert np.isnan(back["a"].to_numpy()[np.isnan(frame["a"].to_numpy())]).all()
    assert back["b"].is_null().to_list() == frame["b"].is_null().to_list()


def test_engines_and_file_counts_equal_the_mapinarrow_path(spark, runs):
    def table(run, name):
        return delta.read_table(spark, str(runs[run] / name))

    (ref,) = _summary(runs["ref"])
    assert ref["engine"]["steps"]["tokenize"]["path"] == "mapInArrow"
    for other in [r for r in runs if r != "ref"]:
        (summary,) = _summary(runs[other])
        assert summary["engine"]["steps"]["tokenize"]["path"] == "files"
        assert summary["columns"] == ref["columns"] and summary["counts"] == ref["counts"]
        assert_df_equality(table("ref", "tokens"), table(other, "tokens"), ignore_row_order=True, ignore_nullable=True)
        # bin means come from exact fixed-point sums: bit-identical whatever the files
        assert_df_equality(table("ref", "tokenizer"), table(other, "tokenizer"), ignore_row_order=True)
        assert_df_equality(table("ref", "back/detokenized"), table(other, "back/detokenized"), ignore_row_order=True,
                           allow_nan_equality=True, ignore_nullable=True)


def test_detokenize_centre_and_uniform_method(spark, source, tmp_path, capsys):
    out = str(tmp_path / "u")
    code, summary, _ = _run(capsys, ["--input", source["one"], "--columns", "a", "--output", out, "--method", "uniform", "--bins", "101"])
    assert code == 0
    x = source["frame"]["a"].to_numpy()
    scale = np.nanmean(np.abs(x))
    info = summary["columns"]["a"]
    assert info["scale"] == pytest.approx(scale, rel=1e-12) and info["effective_bins"] == 101
    tokenizer = delta.scan_table(f"{out}/tokenizer").collect().sort("bin")
    np.testing.assert_allclose(tokenizer["lower"].to_numpy(), K.uniform_edges(101, scale)[:-1], rtol=1e-12)
    above = int((x[np.isfinite(x)] > K.uniform_edges(101, scale)[-1]).sum())
    assert above > 0 and info["out_of_range"] == {"below": 0, "above": above}
    code, summary, _ = _run(
        capsys, ["--detokenize", "--tokenizer", f"{out}/tokenizer", "--input", f"{out}/tokens", "--output", f"{out}/back", "--value", "centre"]
    )
    assert code == 0 and summary["counts"]["reserved_tokens"] == 40 and summary["counts"]["invalid_tokens"] == 0
    back = delta.scan_table(f"{out}/back/detokenized").collect().sort("_row_id")["a"].to_numpy()
    centres = ((tokenizer["lower"] + tokenizer["upper"]) / 2).to_numpy()
    finite = np.isfinite(x)
    np.testing.assert_array_equal(np.isin(back[finite], centres), True)


def test_ties_nulls_and_infinities(spark, tmp_path, capsys):
    frame = pl.DataFrame(
        {
            "_row_id": np.arange(12, dtype=np.int64),
            "v": [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, None, float("nan"), float("inf"), float("-inf"), 5.0],
            "w": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, None],
        },
        schema={"_row_id": pl.Int64, "v": pl.Float64, "w": pl.Float64},
    )
    src = str(tmp_path / "src")
    delta.write_polars(frame, src, mode="overwrite")
    out = str(tmp_path / "out")
    code, summary, _ = _run(capsys, ["--input", src, "--columns", "v,w", "--output", out, "--bins", "4"])
    assert code == 0
    v, w = summary["columns"]["v"], summary["columns"]["w"]
    assert v["effective_bins"] == 1 and v["collapsed_edges"] == 3  # constant column: one bin [5, 5]
    assert v["reserved_tokens"] == {"null": 1, "nan": 1, "neg_inf": 1, "pos_inf": 1}
    # w: eight zeros in 11 finite values; the 1/4 and 1/2 quantiles equal the minimum
    w_finite = np.array([0.0] * 8 + [1.0, 2.0, 3.0])
    w_edges = K.quantile_edges(0.0, np.quantile(w_finite, [0.25, 0.5, 0.75], method="inverted_cdf"), 3.0)
    assert w_edges.tolist() == [0.0, 1.0, 3.0]
    assert w["effective_bins"] == 2 and w["collapsed_edges"] == 2
    tokens = delta.scan_table(f"{out}/tokens").collect().sort("_row_id")
    assert tokens["v"].to_list() == [0] * 7 + [1, 2, 4, 3, 0]  # n=1: null 1, NaN 2, -inf 3, +inf 4
    assert tokens["w"].to_list() == [0] * 8 + [1, 1, 1, 2]  # 3.0 closes the last bin; null is 2
    code, _, _ = _run(capsys, ["--detokenize", "--tokenizer", f"{out}/tokenizer", "--input", f"{out}/tokens", "--output", f"{out}/back"])
    assert code == 0
    back = delta.scan_table(f"{out}/back/detokenized").collect().sort("_row_id")["v"]
    assert back.is_null().to_list() == [False] * 7 + [True] + [False] * 4
    values = back.to_numpy()
    assert list(values[:7]) == [5.0] * 7 and np.isnan(values[8]) and values[9] == np.inf and values[10] == -np.inf


def test_default_columns_are_the_numeric_ones(spark, tmp_path, capsys):
    frame = pl.DataFrame({"_row_id": [0, 1, 2], "x": [1.0, 2.0, 3.0], "name": ["a", "b", "c"], "n": [1, 1, 2]})
    src = str(tmp_path / "src")
    delta.write_polars(frame, src, mode="overwrite")
    code, summary, err = _run(capsys, ["--input", src, "--output", str(tmp_path / "o"), "--bins", "2"])
    assert code == 0 and summary["default_columns"] == ["x", "n"]
    assert summary["warnings"][0].endswith("non-numeric columns not tokenised: ['name']")
    assert delta.scan_table(str(tmp_path / "o" / "tokens")).collect().columns == ["_row_id", "x", "n"]


def test_unknown_column_exits_2(source, tmp_path, capsys):
    code, summary, err = _run(capsys, ["--input", source["one"], "--columns", "a,nope", "--output", str(tmp_path / "o")])
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and "unknown column 'nope'" in err
    assert summary["status"] == "failed"
    assert "Traceback" not in err


def test_detokenize_bad_inputs_exit_2(source, runs, tmp_path, capsys):
    argv = ["--detokenize", "--input", str(runs["one"] / "tokens"), "--output", str(tmp_path / "b")]
    code, _, err = _run(capsys, argv)
    assert code == 2 and "--tokenizer is required" in err
    code, _, err = _run(capsys, [*argv, "--tokenizer", str(runs["one"] / "tokenizer"), "--columns", "zz"])
    assert code == 2 and "unknown column 'zz'" in err
    values = ["--detokenize", "--tokenizer", str(runs["one"] / "tokenizer"), "--input", source["one"], "--output", str(tmp_path / "c")]
    code, _, err = _run(capsys, values)
    assert code == 2 and "column 'a' is double, not integer tokens" in err


def test_detokenize_with_the_local_engine_starts_no_spark(runs, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    probe = (
        "import runpy, sys\n"
        f"sys.argv[0] = {str(root / 'jobs' / 'tokenize_job.py')!r}\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    assert 'pyspark' not in sys.modules, 'the local engine imported pyspark'\n"
    )
    argv = ["--detokenize", "--engine", "local", "--tokenizer", str(runs["one"] / "tokenizer"), "--input",
            str(runs["one"] / "tokens"), "--output", str(tmp_path / "back")]
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["counts"]["rows"] == 6000


def test_detokenized_columns_keep_the_input_order(source, tmp_path, capsys):
    out = str(tmp_path / "order")
    assert _run(capsys, ["--input", source["one"], "--columns", "c,a,b", "--output", out, "--bins", "8"])[0] == 0
    assert delta.scan_table(f"{out}/tokens").collect_schema().names() == ["_row_id", "c", "a", "b"]
    back = ["--detokenize", "--tokenizer", f"{out}/tokenizer", "--input", f"{out}/tokens", "--output", f"{out}/back"]
    assert _run(capsys, back)[0] == 0
    assert delta.scan_table(f"{out}/back/detokenized").collect_schema().names() == ["_row_id", "c", "a", "b"]
