"""Every job end to end on Spark's native Delta and on delta-rs: the same tables, row for row.

The pipeline job runs ingest -> cluster_eval -> gmm_fit -> gmm_transform -> tokenize on the
built-in demo data, then the inverse transform and the detokeniser run on its outputs,
once per backend in the same session. Every output table must be equal on both (chispa,
row order ignored). In the Spark Connect tier (``PIPELINES_SPARK_CONNECT=1``) the session is
a Connect one, so this is also every job on Spark Connect. Skipped where the session has
no native Delta (the Delta jars were not fetched).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
from chispa import assert_df_equality

from pipelines import delta
from pipelines.gmm.summary import ColumnSpec
from tests.gmm_summaries import assert_same_summaries, both_summaries

REPO = Path(__file__).resolve().parents[1]
TABLES = (
    "ingest/bronze",
    "ingest/quarantine",
    "cluster_eval/metrics",
    "gmm_fit/models",
    "gmm_transform/transformed_values",
    "gmm_transform/feature_values",
    "tokenize/tokenizer",
    "tokenize/tokens",
    "inverse/inverted_values",
    "detokenized/detokenized",
)
# Columns that differ between any two runs (wall-clock times, run ids): not compared.
VOLATILE = {"_ingested_at", "fit_id", "fitted_at", "run_id", "_source_file", "fit_seconds", "eval_seconds"}


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _run(name: str, argv: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = _job(name)(argv)
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert code == 0, summary.get("error")
    return summary


@pytest.fixture(scope="module")
def outputs(spark, tmp_path_factory):
    if "DeltaSparkSessionExtension" not in (spark.conf.get("spark.sql.extensions", None) or ""):
        pytest.skip("no native Delta in this session (the Delta jars were not fetched)")
    root = tmp_path_factory.mktemp("backends")
    cfg = root / "small.yaml"
    cfg.write_text("cluster_eval:\n  k_min: 2\n  k_max: 4\n  silhouette_sample: 2000\n")
    saved = delta.forced_backend()
    out = {}
    try:
        for backend in ("native", "delta-rs"):
            delta.set_backend(backend)  # a caller's choice: the jobs' config says "auto"
            o = root / backend
            summary = _run("pipeline", ["--output", str(o), "--config", str(cfg)])
            # day 1 and the demo's day 2 (ingest, drift, refit, transform): every stage succeeded
            assert [s["status"] for s in summary["stages"]] == ["succeeded"] * 9
            _run("gmm_transform", ["--inverse", "--fit-dir", str(o / "gmm_fit"),
                                   "--input", str(o / "gmm_transform" / "transformed_values"), "--output", str(o / "inverse")])
            _run("tokenize_job", ["--detokenize", "--tokenizer", str(o / "tokenize" / "tokenizer"),
                              "--input", str(o / "tokenize" / "tokens"), "--output", str(o / "detokenized")])
            out[backend] = o
    finally:
        delta.set_backend(saved)
    return out


def _log_engine(path: Path) -> set[str]:
    infos = [json.loads(line) for f in sorted((path / "_delta_log").glob("*.json")) for line in f.read_text().splitlines()]
    return {i["commitInfo"].get("engineInfo") or i["commitInfo"].get("clientVersion", "") for i in infos if "commitInfo" in i}


def test_each_backend_wrote_its_own_log(outputs):
    assert all("Apache-Spark" in e for e in _log_engine(outputs["native"] / "ingest" / "bronze"))
    assert all("delta-rs" in e for e in _log_engine(outputs["delta-rs"] / "ingest" / "bronze"))


@pytest.mark.parametrize("table", TABLES)
def test_outputs_equal_across_backends(spark, outputs, table):
    native = delta.read_table(spark, str(outputs["native"] / table))
    rs = delta.read_table(spark, str(outputs["delta-rs"] / table))
    assert native.columns == rs.columns
    keep = [c for c in native.columns if c not in VOLATILE]
    # The demo's day-2 batch, ingested last (overwrite), is clean: its quarantine is empty on both.
    assert native.count() > 0 or table == "ingest/quarantine"
    assert_df_equality(native.select(keep), rs.select(keep), ignore_row_order=True, allow_nan_equality=True)
    props = [{k: v for k, v in delta.table_properties(str(outputs[b] / table)).items() if not k.endswith("runId")}
             for b in ("native", "delta-rs")]
    assert props[0] == props[1]


def test_gmm_fit_summarises_a_spark_written_table_on_the_driver_as_spark_does(spark, outputs):
    """The bronze table Spark's Delta wrote (its log, stats and checkpoint), read by delta-rs on
    the driver: the column types Spark reports and the summaries of the Spark pass, bit for bit."""
    path = str(outputs["native"] / "ingest" / "bronze")
    specs = [ColumnSpec("amount", "mixed", (0.0,)), ColumnSpec("score", "continuous"),
             ColumnSpec("age", "continuous"), ColumnSpec("segment", "categorical")]
    (d_types, on_driver, d_where), (s_types, on_spark, s_where) = both_summaries(spark, path, specs, max_bins=256)
    assert (d_where, s_where) == ("driver", "spark")
    assert d_types == s_types
    assert_same_summaries(on_driver, on_spark)
