"""The drift job on Spark, against scipy/numpy on the same data; time travel; --only-drifted; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats
from sklearn.datasets import load_breast_cancer

from jobs.drift import main
from jobs.gmm_fit import main as gmm_fit_main
from pipelines import delta
from pipelines.config import load_config
from pipelines.drift import kernels as K
from pipelines.drift import stage
from pipelines.runs import Run

N0, N1 = 3000, 2500


def _frame(rng, n, *, shift=0.0, cats=("a", "b", "c")):
    x = rng.normal(shift, 1.0, n)
    x[:7] = [np.nan, np.nan, np.inf, -np.inf, np.nan, -0.0, 0.0]
    return pl.DataFrame({
        "_row_id": np.arange(n, dtype=np.int64),
        "x": x,
        "ties": rng.integers(0, 6, n).astype(np.float64) + 3 * shift,  # heavy ties
        "count": rng.integers(0, 9, n).astype(np.int64),  # an integer column
        "cat": rng.choice(list(cats), n).tolist(),
    }).with_columns(pl.when(pl.col("_row_id") % 13 == 0).then(None).otherwise(pl.col("x")).alias("x"))


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """One table, two versions: v0 the baseline, v1 shifted (plus a new category, one vanished)."""
    rng = np.random.default_rng(3)
    path = str(tmp_path_factory.mktemp("drift") / "bronze")
    base, cur = _frame(rng, N0), _frame(rng, N1, shift=0.4, cats=("a", "b", "d"))
    delta.write_polars(base, path, mode="overwrite")
    delta.write_polars(cur, path, mode="overwrite")
    return path, base, cur


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def _finite(frame, col):
    x = frame[col].cast(pl.Float64).to_numpy()
    return x[np.isfinite(x)]


def _rows(out) -> dict[str, dict]:
    """The drift table's rows of the last run, by column."""
    table = pl.read_delta(str(Path(out) / "drift")).sort("computed_at")
    return {r["column"]: r for r in table.filter(pl.col("run_id") == table["run_id"][-1]).to_dicts()}


def _expected_psi(x0, x1, bins=10):
    # percentile_approx is exact at this size: the smallest value with at least k/bins of the rows at or below it
    q = np.quantile(x0, np.arange(1, bins) / bins, method="inverted_cdf")
    inner = np.unique(np.r_[x0.min(), q, x0.max()])[1:-1]
    c0 = np.bincount(np.searchsorted(inner, x0, side="right"), minlength=inner.size + 1)
    c1 = np.bincount(np.searchsorted(inner, x1, side="right"), minlength=inner.size + 1)
    r, c = c0 / c0.sum() + 1e-7, c1 / c1.sum() + 1e-7
    return float(np.sum((c - r) * np.log(c / r))), inner.size + 1


def test_time_travel_drift_equals_scipy_and_numpy(spark, versions, tmp_path, capsys):
    path, base, cur = versions
    out = str(tmp_path / "out")
    code, summary, _ = _run(capsys, "--current", path, "--baseline", f"{path}@0", "--categorical", "count",
                            "--columns", "x,ties,count,cat", "--output", out)
    assert code == 0, summary["error"]
    rows = _rows(out)
    assert set(rows) == {"x", "ties", "count", "cat"}
    for col in ("x", "ties"):
        r = rows[col]
        assert (r["baseline_table"], r["baseline_version"], r["current_version"]) == (path, 0, 1)
        x0, x1 = _finite(base, col), _finite(cur, col)
        ref = stats.ks_2samp(x0, x1, method="asymp")
        assert abs(r["ks_statistic"] - ref.statistic) < 1e-12
        assert r["ks_pvalue"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        psi, n_bins = _expected_psi(x0, x1)
        assert r["psi"] == pytest.approx(psi, rel=1e-12) and r["bins"] == n_bins
        assert r["mean_baseline"] == pytest.approx(x0.mean(), rel=1e-12)
        assert r["std_current"] == pytest.approx(x1.std(), rel=1e-12)
        assert r["mean_change"] == pytest.approx(x1.mean() - x0.mean(), rel=1e-9)
    assert rows["x"]["null_rate_baseline"] == pytest.approx(base["x"].is_null().sum() / N0)
    assert rows["x"]["nan_rate_change"] == pytest.approx(cur["x"].is_nan().sum() / N1 - base["x"].is_nan().sum() / N0)
    assert rows["x"]["inf_rate_current"] == pytest.approx(cur["x"].is_infinite().sum() / N1)
    # the shifted tied column moved across its baseline bins
    assert rows["ties"]["drifted"] and rows["ties"]["psi"] > 0.2 and rows["ties"]["ks_pvalue"] < 1e-6

    # categorical: PSI over the union of categories, chi-square as scipy, unseen/vanished named
    c = rows["cat"]
    k0, k1 = base["cat"].value_counts(), cur["cat"].value_counts()
    cats = sorted({*k0["cat"].to_list(), *k1["cat"].to_list()}, key=lambda v: (v is None, v or ""))
    n0 = [dict(zip(k0["cat"], k0["count"], strict=True)).get(k, 0) for k in cats]
    n1 = [dict(zip(k1["cat"], k1["count"], strict=True)).get(k, 0) for k in cats]
    r0, r1 = np.array(n0) / N0 + 1e-7, np.array(n1) / N1 + 1e-7
    assert c["psi"] == pytest.approx(np.sum((r1 - r0) * np.log(r1 / r0)), rel=1e-12)
    chi = stats.chi2_contingency(np.array([n0, n1]), correction=False)
    assert c["chi2_statistic"] == pytest.approx(chi.statistic, rel=1e-12)
    assert (c["unseen_top"], c["vanished_top"], c["unseen_categories"]) == (["d"], ["c"], 1)
    assert c["drifted"] and "psi" in c["reason"]
    # the integer column compared as categories is unchanged in distribution
    assert not rows["count"]["drifted"] and rows["count"]["reason"].startswith("stable")

    saved = json.loads((Path(out) / "summary.json").read_text())
    assert sorted(saved["drifted"]) == sorted(r for r in rows if rows[r]["drifted"])
    assert summary["counts"]["drifted"] == len(saved["drifted"])
    html = (Path(out) / "report.html").read_text()
    assert "Drift report" in html and html.count("data:image/png;base64") == len(saved["drifted"])
    assert "ties" in (Path(out) / "report.md").read_text()


def test_same_results_for_1_and_7_partitions_and_any_number_of_passes(spark, versions, tmp_path, monkeypatch):
    path, base, cur = versions
    cfg = load_config(overrides={"drift": {"current": path, "baseline": f"{path}@0", "output": str(tmp_path)}})
    results, passes = [], []
    for parts in (1, 7):
        tables = []
        for name, frame in (("b", base), ("c", cur)):
            target = str(tmp_path / f"{name}{parts}")
            delta.write_table(spark.createDataFrame(frame.to_pandas()).repartition(parts), target, mode="overwrite")
            tables.append(stage.TableVersion(target, 0))
        assert len(delta._open(tables[0].path).file_uris()) == parts
        for budgets in ({}, {"COLLECT_ROWS": 8, "PROBE_DISTINCT": 2, "MAX_SPLIT": 3, "MAX_COLLECT_ROWS": 40}):
            with monkeypatch.context() as m:  # tiny budgets: many splits and passes, every leaf kind
                for k, v in budgets.items():
                    m.setattr(K, k, v)
                kinds = {"x": "continuous", "ties": "continuous", "cat": "categorical"}
                run = Run("drift", str(tmp_path))
                rows = stage.compare(spark, *tables, ["x", "ties", "cat"], kinds, {}, cfg.drift, run)
            passes.append(run.details["ks_passes"])
            results.append({r["column"]: (r["ks_statistic"], r["psi"], r["chi2_statistic"], r.get("mean_current"))
                            for r in rows})
    assert passes[1]["x"] > passes[0]["x"] + 2, passes
    for r in results[1:]:
        for col, got in r.items():
            assert got[:3] == results[0][col][:3], col  # counts-based: bit for bit
            # moments are floating sums, equal up to the order of the additions
            assert got[3] == (None if got[3] is None else pytest.approx(results[0][col][3], rel=1e-12)), col
    for col in ("x", "ties"):
        ref = stats.ks_2samp(_finite(base, col), _finite(cur, col)).statistic
        assert abs(results[0][col][0] - ref) < 1e-12


def test_real_dataset_with_an_injected_shift(spark, tmp_path, capsys):
    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    rng = np.random.default_rng(0)
    half = rng.permutation(len(data)) < len(data) // 2
    base, cur = data[half].copy(), data[~half].copy()
    cur["mean_radius"] += data["mean_radius"].std()  # the injected shift: one standard deviation
    path = str(tmp_path / "bronze")
    for frame in (base, cur):
        delta.write_polars(pl.from_pandas(frame.reset_index(drop=True)), path, mode="overwrite")
    out = str(tmp_path / "out")
    code, summary, _ = _run(capsys, "--current", path, "--baseline", f"{path}@0",
                            "--columns", "mean_radius,mean_texture,worst_smoothness", "--output", out)
    assert code == 0, summary["error"]
    rows = _rows(out)
    assert rows["mean_radius"]["drifted"] and rows["mean_radius"]["psi"] > 0.2
    assert rows["mean_radius"]["ks_pvalue"] < 1e-6
    for col in ("mean_texture", "worst_smoothness"):
        assert not rows[col]["drifted"], rows[col]["reason"]
        assert rows[col]["ks_statistic"] == pytest.approx(stats.ks_2samp(base[col], cur[col]).statistic, abs=1e-12)
    assert summary["drifted"] == ["mean_radius"]


def _model_files(fit_dir: str) -> dict[str, set[str]]:
    uris = delta._open(str(Path(fit_dir) / "models")).file_uris()
    out: dict[str, set[str]] = {}
    for u in uris:
        column = next(p.split("=", 1)[1] for p in u.split("/") if p.startswith("column="))
        out.setdefault(column, set()).add(u)
    return out


def test_baseline_fit_loglik_and_only_drifted_refits_just_those(spark, tmp_path, capsys):
    rng = np.random.default_rng(5)
    n = 4000
    path = str(tmp_path / "bronze")
    a = np.r_[rng.normal(-3, 0.5, n // 2), rng.normal(3, 0.5, n // 2)]
    v0 = pl.DataFrame({"a": a, "b": rng.normal(10, 2, n), "c": rng.gamma(2.0, 1.0, n)})
    delta.write_polars(v0, path, mode="overwrite")
    fit_dir, out = str(tmp_path / "fit"), str(tmp_path / "drift")
    assert gmm_fit_main(["--input", path, "--columns", "a,b,c", "--fit-dir", fit_dir]) == 0
    capsys.readouterr()
    status = {r["column"]: r for r in pl.read_delta(str(Path(fit_dir) / "fit_status")).to_dicts()}
    assert {(r["input_table"], r["input_version"], r["reason"]) for r in status.values()} == {(path, 0, "not fitted yet")}

    # day 2: 'a' fills the gap between its modes (same mean and std, PSI below 0.2 but a worse fit); 'b' is redrawn
    a2 = np.r_[rng.normal(-3, 0.5, n // 4), rng.normal(3, 0.5, n // 4), rng.uniform(-3, 3, n // 2)]
    v1 = pl.DataFrame({"a": a2, "b": rng.normal(10, 2, n), "c": rng.gamma(2.0, 1.0, n) + 2.0})
    delta.write_polars(v1, path, mode="overwrite")
    code, summary, _ = _run(capsys, "--current", path, "--baseline-fit", fit_dir, "--output", out)
    assert code == 0, summary["error"]
    rows = _rows(out)
    assert {c: r["baseline_version"] for c, r in rows.items()} == {"a": 0, "b": 0, "c": 0}
    # the log-likelihoods are those of the fitted mixture (scipy's normal density) on each version
    models = pl.read_delta(str(Path(fit_dir) / "models")).filter(pl.col("column") == "a", pl.col("kept"))
    w = models["weight"].to_numpy() / models["weight"].sum()
    mean_ll = lambda x: np.log((w * stats.norm.pdf(x[:, None], models["mean"], models["std"])).sum(1)).mean()  # noqa: E731
    assert rows["a"]["loglik_baseline"] == pytest.approx(mean_ll(a), rel=1e-9)
    assert rows["a"]["loglik_current"] == pytest.approx(mean_ll(a2), rel=1e-9)
    assert rows["a"]["drifted"] and "log-likelihood" in rows["a"]["reason"]
    assert rows["c"]["drifted"] and "psi" in rows["c"]["reason"]
    assert not rows["b"]["drifted"]

    before = _model_files(fit_dir)
    assert gmm_fit_main(["--input", path, "--columns", "a,b,c", "--fit-dir", fit_dir, "--only-drifted", out]) == 0
    _, err = capsys.readouterr()
    assert "refitting 2 drifted column(s): a, c" in err
    after = _model_files(fit_dir)
    assert after["b"] == before["b"]  # untouched: the same files in the Delta log
    assert after["a"].isdisjoint(before["a"]) and after["c"].isdisjoint(before["c"])
    status = {r["column"]: r for r in pl.read_delta(str(Path(fit_dir) / "fit_status")).to_dicts()}
    assert status["b"]["input_version"] == 0 and status["a"]["input_version"] == 1
    assert status["a"]["reason"].startswith(f"drift run {summary['run_id']}: ") and status["a"]["attempt"] == 2

    # against the refitted models nothing drifted: the next refit does nothing and says so
    code, summary, _ = _run(capsys, "--current", path, "--baseline-fit", fit_dir, "--output", out)
    assert code == 0 and summary["drifted"] == []
    assert {c: (r["run_id"], r["baseline_version"]) for c, r in _rows(out).items()} == {
        "a": (summary["run_id"], 1), "b": (summary["run_id"], 0), "c": (summary["run_id"], 1)}
    assert gmm_fit_main(["--input", path, "--columns", "a,b,c", "--fit-dir", fit_dir, "--only-drifted", out]) == 0
    _, err = capsys.readouterr()
    assert "nothing to refit" in err
    assert _model_files(fit_dir) == after


def test_bad_input_is_one_line_and_exit_2(spark, versions, tmp_path, capsys):
    path, _, _ = versions
    out = str(tmp_path / "out")
    cases = [
        (["--current", path, "--baseline", f"{path}@9"], "no version 9 (latest is 1)"),
        (["--current", f"{path}@5", "--baseline", f"{path}@0"], "no version 5"),
        (["--current", path, "--baseline", f"{path}@0", "--columns", "x,nope"], "column(s) not found: nope"),
        (["--current", str(tmp_path / "missing"), "--baseline", f"{path}@0"], "not a Delta table"),
        (["--current", path], "exactly one of --baseline"),
        (["--current", path, "--baseline-fit", str(tmp_path / "nofit"), "--columns", "nope"], "not found: nope"),
    ]
    for args, message in cases:
        code = main([*args, "--output", out])
        _, err = capsys.readouterr()
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert gmm_fit_main(["--input", path, "--columns", "x", "--fit-dir", str(tmp_path / "f"),
                         "--only-drifted", str(tmp_path / "none")]) == 2
    assert "no drift summary" in capsys.readouterr().err
