"""cluster_eval's passes over the input's files (the engine's tasks read the Parquet files,
numpy prepares the rows): the same rows as ``prepare``'s Spark expressions, bit for bit,
and the same sweep as the passes that Spark reads."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn import datasets

from pipelines import delta
from pipelines.cluster import lloyd
from pipelines.cluster.batched import fit_all, runner
from pipelines.cluster.data import ROW_ID, feature_columns, prepare, read_input
from pipelines.config import ClusterEvalSettings
from pipelines.engine import Engine
from pipelines.runs import Run

KS = [2, 3, 4, 5]


def _wine_table(path: str, files: int) -> str:
    """The wine data unscaled, with an integer feature and bad values, in ``files`` data files."""
    x = datasets.load_wine().data
    n = x.shape[0]
    frame = pl.DataFrame({ROW_ID: np.arange(n, dtype=np.int64),
                          **{f"f{j}": x[:, j] for j in range(6)},
                          "proline": x[:, 12].astype(np.int64)})
    bad = {3: ("f0", None), 17: ("f1", float("nan")), 40: ("f2", float("inf")), 41: ("f2", float("-inf")),
           99: ("proline", None)}
    for i, (c, v) in bad.items():
        frame = frame.with_columns(pl.when(pl.col(ROW_ID) == i).then(pl.lit(v, dtype=frame[c].dtype))
                                   .otherwise(pl.col(c)).alias(c))
    for i, part in enumerate(frame.iter_slices(n_rows=-(-n // files))):
        delta.write_polars(part, path, mode="overwrite" if i == 0 else "append")
    assert len(delta._open(path).file_uris()) == files
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_files")
    return {n: _wine_table(str(root / f"wine_{n}"), n) for n in (1, 7)}


def _prepared(spark, path: str, impute: str):
    settings = ClusterEvalSettings(input=path, format="delta", impute=impute, summary_rows=100, n_init=3)
    run = Run(job="test", output="unused")
    return prepare(read_input(spark, settings, run), settings, run, source=path), settings, run


@pytest.mark.parametrize("impute", ["drop", "mean"])
def test_file_rows_equal_the_spark_prepared_rows_bit_for_bit(spark, tables, impute):
    prep, _, _ = _prepared(spark, tables[7], impute)
    assert prep.files is not None and prep.files.version == delta.table_version(tables[7])
    names = feature_columns(len(prep.features))
    # test-sized data: the Spark rows, in row-id order, against numpy's on the raw rows
    want = np.array([[r[c] for c in names] for r in prep.frame.orderBy(ROW_ID).collect()])
    got = prep.files.matrix(pl.read_delta(tables[7]).sort(ROW_ID))
    assert got.shape == (178 - 5 if impute == "drop" else 178, 7)
    np.testing.assert_array_equal(got, want)


def _sweep(spark, path: str, *, files: bool):
    prep, settings, run = _prepared(spark, path, "drop")
    assert prep.files is not None
    use = prep.files if files else None
    fitted = fit_all(prep.frame, KS, settings, run, rows=prep.rows, key=prep.sample_key, files=use)
    assert not fitted.local  # at most 100 summary rows of 173: the passes run on the data
    order = sorted(fitted.fits)
    evals = lloyd.evaluate(runner(prep.frame, use), [fitted.fits[k] for k in order], pivot=fitted.pivot)
    return fitted, dict(zip(order, evals, strict=True))


def _assert_same(a, b):
    (fa, ea), (fb, eb) = a, b
    assert sorted(fa.fits) == sorted(fb.fits) == KS
    for k in KS:
        assert fa.fits[k].n_iter == fb.fits[k].n_iter and fa.fits[k].converged == fb.fits[k].converged
        np.testing.assert_array_equal(ea[k].counts, eb[k].counts)
        np.testing.assert_allclose(ea[k].centroids, eb[k].centroids, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ea[k].sse, eb[k].sse, rtol=1e-12)
        np.testing.assert_allclose(ea[k].sum_dist, eb[k].sum_dist, rtol=1e-12)
        assert ea[k].silhouette_spark == pytest.approx(eb[k].silhouette_spark, rel=1e-12)


def test_file_passes_equal_spark_passes_and_do_not_depend_on_the_files(spark, tables):
    by_files = _sweep(spark, tables[7], files=True)
    _assert_same(by_files, _sweep(spark, tables[7], files=False))
    _assert_same(by_files, _sweep(spark, tables[1], files=True))
    # bit for bit across runs of the same files
    again = _sweep(spark, tables[7], files=True)
    for k in KS:
        np.testing.assert_array_equal(by_files[1][k].sse, again[1][k].sse)


def test_inputs_the_tasks_cannot_read_stay_on_spark(spark, tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n" + "\n".join(f"{i},{i % 7}.5" for i in range(50)))
    settings = ClusterEvalSettings(input=str(csv), format="csv")
    run = Run(job="test", output="unused")
    assert prepare(read_input(spark, settings, run), settings, run, source=str(csv)).files is None
    # a decimal feature: numpy's cast to double is not Spark's
    path = str(tmp_path / "dec")
    spark.range(50).selectExpr(f"id as {ROW_ID}", "cast(id / 7 as decimal(10, 4)) as d", "cast(id % 5 as double) as e") \
        .write.format("parquet").save(path)
    settings = ClusterEvalSettings(input=path, format="parquet")
    assert prepare(read_input(spark, settings, run), settings, run, source=path).files is None


def test_assignment_files_equal_the_spark_assignments(spark, tables, tmp_path):
    from pipelines.cluster.batched import assignments, write_assignment_files

    prep, settings, run = _prepared(spark, tables[7], "drop")
    fitted = fit_all(prep.frame, KS, settings, run, rows=prep.rows, key=prep.sample_key, files=prep.files)
    centres = {k: fitted.fits[k].centres for k in (3, 5)}
    path = str(tmp_path / "assignments")
    write_assignment_files(Engine("spark", spark), prep.files, centres, pivot=fitted.pivot, path=path)
    got = pl.read_delta(path).sort(ROW_ID, "k")
    want = pl.from_arrow(assignments(prep.frame, centres, pivot=fitted.pivot).toArrow()).sort(ROW_ID, "k")
    assert got.height == 2 * 173 and got.select(ROW_ID, "k", "cluster").equals(want.select(ROW_ID, "k", "cluster"))
    assert delta._open(path).metadata().partition_columns == ["k"]


def _bits(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes()


@pytest.mark.parametrize("impute", ["drop", "mean"])
@pytest.mark.parametrize("n_files", [1, 7])
def test_a_small_input_prepared_on_the_driver_equals_the_spark_prepare_bit_for_bit(spark, tables, impute, n_files):
    """At most summary_rows rows: one Spark job brings them to the driver, and the profile
    (per-partition sums and moment updates as Spark's aggregates make them), the imputed
    means, the scaling and the seeded sample are bit for bit those of the Spark steps."""
    from pipelines.cluster.data import bounded_sample, held_sample

    path = tables[n_files]
    settings = ClusterEvalSettings(input=path, format="delta", impute=impute, summary_rows=1000, n_init=3)
    spark_run, held_run = Run(job="test", output="unused"), Run(job="test", output="unused")
    on_spark = prepare(read_input(spark, settings, spark_run), settings, spark_run, source=path)
    held = prepare(read_input(spark, settings, held_run), settings, held_run, source=path, collect_up_to=1000)
    assert on_spark.held is None and held.held is not None
    # one small file is read on the driver (Spark reads it as partition 0); 7 files are Spark's to lay out
    assert held_run.details["held_read"] == ("file" if n_files == 1 else "spark")
    assert held.counts == on_spark.counts and held_run.warnings == spark_run.warnings
    for name in ("mean", "std", "minimum", "maximum"):
        assert _bits(getattr(held.profile, name)) == _bits(getattr(on_spark.profile, name)), name
    assert _bits(held.shift) == _bits(on_spark.shift) and _bits(held.scale) == _bits(on_spark.scale)
    ids, x = held_sample(held, n_max=1000)
    want_ids, want_x = bounded_sample(on_spark.frame, n_max=1000, rows=on_spark.rows, seed=settings.seed,
                                      key=on_spark.sample_key)
    np.testing.assert_array_equal(ids, want_ids)
    assert _bits(x) == _bits(want_x)
    # above the threshold the Spark steps run
    over = Run(job="test", output="unused")
    assert prepare(read_input(spark, settings, over), settings, over, source=path, collect_up_to=100).held is None


def test_the_sample_hash_in_numpy_equals_sparks_xxhash64(spark):
    from pyspark.sql import functions as F

    from pipelines.cluster.data import hash_uniform, hash_uniform_ids

    ids = np.r_[np.arange(-50, 2000), [2**31, -(2**31) - 1, 2**62, -(2**63), 2**63 - 1]].astype(np.int64)
    df = spark.createDataFrame([(int(i),) for i in ids], "id long")
    for seed in (42, 0, -3, 2**40):
        want = np.array([r[0] for r in df.select(hash_uniform(F.lit(seed), F.col("id"), F.lit(-7))).collect()])
        assert _bits(hash_uniform_ids(seed, ids, -7)) == _bits(want), seed


def test_the_built_in_dataset_prepared_on_the_driver_equals_the_spark_prepare(spark):
    from pipelines.cluster.data import DEFAULT_ROWS, bounded_sample, held_sample

    settings = ClusterEvalSettings(n_init=3)
    a_run, b_run = Run(job="test", output="unused"), Run(job="test", output="unused")
    a = prepare(read_input(spark, settings, a_run), settings, a_run, source="built-in")
    b = prepare(read_input(spark, settings, b_run), settings, b_run, source="built-in", collect_up_to=DEFAULT_ROWS)
    assert b.held is not None and b.held.ids.shape[0] == DEFAULT_ROWS
    assert _bits(a.shift) == _bits(b.shift) and _bits(a.scale) == _bits(b.scale)
    ids, x = held_sample(b, n_max=settings.summary_rows)
    want_ids, want_x = bounded_sample(a.frame, n_max=settings.summary_rows, rows=a.rows, seed=settings.seed,
                                      key=a.sample_key)
    np.testing.assert_array_equal(ids, want_ids)
    assert _bits(x) == _bits(want_x)


def test_id_like_columns_of_a_small_input_are_found_on_the_driver_as_in_spark(spark, tmp_path):
    """An input prepared on the driver counts the distinct integers there (exactly, no Spark
    job): the same columns are left out as by the Spark check."""
    n = 300
    rng = np.random.default_rng(5)
    path = str(tmp_path / "ids")
    delta.write_polars(pl.DataFrame({ROW_ID: np.arange(n, dtype=np.int64), "serial": rng.permutation(n) * 7 + 11,
                                     "customer_id": np.arange(n) % 50, "segment": np.arange(n) % 3,
                                     "amount": rng.normal(size=n)}), path)
    settings = ClusterEvalSettings(input=path, format="delta", summary_rows=1000, n_init=3)
    runs = [Run(job="test", output="unused") for _ in range(2)]
    preps = [prepare(read_input(spark, settings, r), settings, r, source=path, collect_up_to=c)
             for r, c in zip(runs, (0, 1000), strict=True)]
    assert preps[0].held is None and preps[1].held is not None
    assert preps[0].features == preps[1].features == ["segment", "amount"]
    assert runs[0].warnings == runs[1].warnings
    assert "customer_id: named like an id" in runs[1].warnings[0] and "serial: integer, unique per row" in runs[1].warnings[0]
