"""The default ``kmeans`` sweep: every k in a handful of passes over the data.

1. summary: a seeded sample of at most ``summary_rows`` rows (one pass; the sample is
   keyed by a hash of the row id, so it does not depend on the partitioning);
2. every k fitted on the driver: k-means++ with ``n_init`` restarts on the summary;
3. Lloyd refinement on the full data, one pass per step for all ks still moving, until a
   step lowers a k's inertia by at most ``tol`` (relative) or after ``max_iter`` passes;
4. one exact evaluation pass for all ks: inertia, Calinski-Harabasz, Davies-Bouldin,
   Spark's squared-Euclidean silhouette and, with ``--gmm``, each mixture's log-likelihood.

The per-row work is :mod:`pipelines.cluster.lloyd` (numpy). Over a Delta table by path or
Parquet files, each pass is a reduce of :mod:`pipelines.engine` (Spark tasks read the data
files with pyarrow and prepare the rows with numpy, :class:`pipelines.cluster.data.FileInput`)
and the ``assignments`` table is an engine map; otherwise :func:`pipelines.cluster.passes.reduce`
runs the kernels over the prepared Spark frame. Nothing is cached: each pass streams from
the input.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.cluster import lloyd, passes
from pipelines.cluster.data import (
    ROW_ID,
    FileInput,
    Prepared,
    bounded_sample,
    distinct_points,
    feature_columns,
    pass_engine,
)
from pipelines.cluster.scores import ClusterStats, calinski_harabasz_from_stats, davies_bouldin_from_stats

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import ClusterEvalSettings
    from pipelines.engine import Engine
    from pipelines.runs import Run


def _threads_one():
    # scikit-learn's OpenMP and BLAS threads spin against Spark's workers on a busy
    # machine (12x slower measured on 2 cores); one thread is also deterministic.
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def runner(frame: DataFrame, files: FileInput | None = None, engine: Engine | None = None):
    """``run_pass(kernel, length)`` over the scaled feature columns of ``frame``.

    With ``files``, each pass is an engine reduce over the input's files instead: every
    task reads its file with pyarrow and prepares the rows with numpy, so no row passes
    through the JVM (Spark's Parquet reader, the row conversion and the Arrow transfer to
    Python were most of a pass: measured in benchmarks/RESULTS.md). The rows are the same;
    the partials are summed per file in path order instead of per Spark partition.
    ``engine``: the run's (default: :func:`pipelines.cluster.data.pass_engine`'s).
    """
    if files is not None:
        return _file_runner(pass_engine(engine, frame.sparkSession), files)
    cols = frame.select(*[c for c in frame.columns if c != ROW_ID])

    def run_pass(kernel, length: int) -> np.ndarray:
        def limited(x: np.ndarray) -> np.ndarray:
            with _threads_one():
                return kernel(x)

        return passes.reduce(cols, limited, length)

    return run_pass


def _file_runner(engine: Engine, files: FileInput):
    import polars as pl

    from pipelines.engine import Reducer

    def run_pass(kernel, length: int) -> np.ndarray:
        def partial(frame: pl.DataFrame) -> pl.DataFrame:
            x = files.matrix(frame)
            acc = np.zeros(length)
            with _threads_one():
                for start in range(0, x.shape[0], passes.BATCH_ROWS):
                    acc += kernel(x[start:start + passes.BATCH_ROWS])
            return pl.DataFrame({"v": acc})

        def merge(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
            return pl.DataFrame({"v": a["v"].to_numpy() + b["v"].to_numpy()})

        result = engine.reduce(files.path, Reducer(partial, merge), columns=list(files.columns), version=files.version)
        return np.zeros(length) if result.partial is None else result.partial["v"].to_numpy()

    return run_pass


def local_runner(x: np.ndarray):
    """``run_pass(kernel, length)`` over an in-memory matrix, on the driver.

    Used when the summary sample holds every row of the input (``rows <= summary_rows``):
    the same kernels over the same rows, in batches of :data:`passes.BATCH_ROWS`, without
    a Spark job per pass. The rows are already on the driver (the summary), so driver
    memory stays bounded by ``summary_rows``.
    """

    def run_pass(kernel, length: int) -> np.ndarray:
        acc = np.zeros(length)
        with _threads_one():
            for start in range(0, x.shape[0], passes.BATCH_ROWS):
                acc += kernel(x[start:start + passes.BATCH_ROWS])
        return acc

    return run_pass


@dataclass
class Fitted:
    """The refined ks of one data set: fits in input (clustering-space) coordinates via ``pivot``.

    ``local``: the passes ran on the driver over the summary, which held every row.
    """

    pivot: np.ndarray
    fits: dict[int, lloyd.KFit]
    skipped: dict[int, str]
    summary_rows: int
    local: bool = False


def fit_all(
    frame: DataFrame,
    ks: list[int],
    settings: ClusterEvalSettings,
    run: Run,
    *,
    rows: int,
    key: list[str],
    summary: np.ndarray | None = None,
    label: str = "",
    local: bool | None = None,
    files: FileInput | None = None,
) -> Fitted:
    """Summary, driver-side fit of every k, and full-data Lloyd refinement of ``frame``.

    Parameters
    ----------
    frame : pyspark.sql.DataFrame
        A prepared frame: ``_row_id`` and the scaled feature columns.
    ks : list of int
    settings : ClusterEvalSettings
        ``summary_rows``, ``n_init``, ``seed``, ``tol`` and ``max_iter`` are used.
    run : Run
        For progress lines.
    rows : int
        Rows of ``frame``.
    key : list of str
        Columns the summary sample hashes.
    summary : ndarray, optional
        The already drawn sample, when the caller has one.
    label : str
        Prefix of the progress lines.
    local : bool, optional
        Run the Lloyd passes on the driver over the summary (it must hold every row).
        Default: exactly when it does (``rows <= summary_rows``); False forces Spark passes.
    files : FileInput, optional
        The passes read ``frame``'s rows from the input's files (see :func:`runner`).

    Returns
    -------
    Fitted
    """
    if summary is None:
        run.progress(f"{label}summary pass: seeded sample of at most {settings.summary_rows} of {rows} rows")
        _, summary = bounded_sample(frame, n_max=settings.summary_rows, rows=rows, seed=settings.seed, key=key)
    whole = summary.shape[0] >= rows  # the seeded sample kept every row
    if local and not whole:
        raise ValueError(f"local passes need every row in the summary ({summary.shape[0]} of {rows})")
    local = whole if local is None else local
    pivot = summary.mean(axis=0)
    with _threads_one():
        init = lloyd.fit_summary(summary, ks, n_init=settings.n_init, seed=settings.seed)
    skipped: dict[int, str] = {}
    missing = [k for k, c in init.items() if c is None]
    if missing:
        # the summary has fewer distinct points than these ks; the full data may not
        n_distinct = np.unique(summary, axis=0).shape[0] if whole else distinct_points(frame, limit=max(ks))
        for k in missing:
            skipped[k] = f"fewer distinct points ({n_distinct}) than k={k}"
            if n_distinct >= k:
                skipped[k] = f"the summary has fewer distinct points than k={k}; raise summary_rows"
    init = {k: c for k, c in init.items() if c is not None}
    fits = lloyd.refine(local_runner(summary) if local else runner(frame, files, run.engine), init, pivot=pivot, tol=settings.tol,
                        max_passes=settings.max_iter, progress=lambda m: run.progress(label + m)) if init else {}
    return Fitted(pivot, fits, skipped, int(summary.shape[0]), local)


def gmm_params(summary: np.ndarray, k: int, *, pivot: np.ndarray, seed: int) -> lloyd.GmmParams:
    """A full-covariance GaussianMixture fitted on the summary (scikit-learn)."""
    from sklearn.mixture import GaussianMixture

    with _threads_one():
        gm = GaussianMixture(n_components=k, covariance_type="full", random_state=seed, max_iter=200).fit(summary)
    return lloyd.GmmParams(np.log(gm.weights_), gm.means_ - pivot, gm.precisions_cholesky_)


def stats_of(ev: lloyd.KEval) -> ClusterStats:
    return ClusterStats(ev.labels, ev.counts, ev.centroids, ev.sse, ev.sum_dist)


def run_batched(
    spark: SparkSession,
    prep: Prepared,
    ks: list[int],
    settings: ClusterEvalSettings,
    run: Run,
    *,
    sample_ids: np.ndarray,
    sample_x: np.ndarray,
):
    """The whole sweep (see the module docstring); ``sample_x`` is the summary, in rank order."""
    from pipelines.cluster.sweep import KResult, Sweep, gap_statistic

    secs: dict[str, float] = {}
    t0 = time.monotonic()
    fitted = fit_all(prep.frame, ks, settings, run, rows=prep.rows, key=prep.sample_key, summary=sample_x,
                     files=prep.files)
    pivot, fits = fitted.pivot, fitted.fits
    order = [k for k in ks if k in fits]
    gmm = [gmm_params(sample_x, k, pivot=pivot, seed=settings.seed) for k in order] if settings.gmm else []
    secs["summary_lloyd"] = time.monotonic() - t0
    run.progress(f"evaluation pass: inertia, Calinski-Harabasz, Davies-Bouldin, Spark silhouette"
                 f"{', GMM log-likelihood' if gmm else ''} for k={','.join(map(str, order))}")
    t0 = time.monotonic()
    run_pass = local_runner(sample_x) if fitted.local else runner(prep.frame, prep.files, run.engine)
    evals = dict(zip(order, lloyd.evaluate(run_pass, [fits[k] for k in order], pivot=pivot, gmm=gmm),
                     strict=True)) if order else {}
    secs["evaluation"] = time.monotonic() - t0

    n_sil = min(settings.silhouette_sample, sample_x.shape[0])
    final = lloyd.Bank.stack([fits[k].centres for k in order]) if order else None
    sample_labels = lloyd.labels_for(sample_x, pivot=pivot, bank=final) if final is not None else None
    sil: dict[int, float | None] = {}
    if n_sil and order:
        t0 = time.monotonic()
        run.progress(f"exact silhouette of a {n_sil}-row sample for k={','.join(map(str, order))}")
        with _threads_one():
            sil = dict(zip(order, lloyd.sample_silhouettes(sample_x[:n_sil], sample_labels[:n_sil]), strict=True))
        secs["silhouette_sample"] = time.monotonic() - t0

    results: list[KResult] = []
    skipped = [{"k": k, "reason": r} for k, r in fitted.skipped.items()]
    for k, reason in fitted.skipped.items():
        run.warn(f"k={k} skipped: {reason}")
    for k in order:
        f, ev = fits[k], evals[k]
        res = KResult(k=k, algorithm=settings.algorithm, n_iter=f.n_iter, converged=f.converged)
        sizes = np.zeros(k, dtype=np.int64)
        sizes[ev.labels] = ev.counts
        res.cluster_sizes = [int(s) for s in sizes]
        res.n_clusters = int(ev.labels.shape[0])
        res.centers = f.means + pivot
        if res.n_clusters < 2:
            reason = "kmeans put every point in one cluster"
            run.warn(f"k={k} skipped: {reason}")
            skipped.append({"k": k, "reason": reason})
            continue
        if res.n_clusters < k:
            res.note = f"kmeans returned {res.n_clusters} non-empty clusters of k={k} asked"
            run.warn(f"k={k}: {res.note}")
        stats = stats_of(ev)
        res.inertia = stats.inertia
        res.training_cost = stats.inertia
        res.calinski_harabasz = calinski_harabasz_from_stats(stats)
        res.davies_bouldin = davies_bouldin_from_stats(stats)
        res.silhouette_spark = ev.silhouette_spark
        res.silhouette_sample = sil.get(k)
        if gmm:
            d = len(prep.features)
            n_params = (k - 1) + k * d + k * d * (d + 1) // 2
            res.log_likelihood = ev.log_likelihood
            res.bic = -2.0 * ev.log_likelihood + n_params * math.log(prep.rows)
            res.aic = -2.0 * ev.log_likelihood + 2.0 * n_params
        results.append(res)
        run.progress(f"k={k}: inertia={res.inertia:.6g} CH={res.calinski_harabasz:.6g} DB={res.davies_bouldin:.6g} "
                     f"silhouette(spark)={res.silhouette_spark:.4f} passes={f.n_iter}"
                     f"{'' if f.converged else ' (not converged)'}")
    gap_info = None
    if settings.gap and results:
        t0 = time.monotonic()
        gap_info = gap_statistic(spark, prep, results, settings, run,
                                 costs=lambda frame, rows, ks_, key, label: _costs(frame, rows, ks_, key, settings, run,
                                                                                   label))
        secs["gap"] = time.monotonic() - t0
    index = {k: j for j, k in enumerate(order)}
    write = None
    if fitted.local:  # every row is on the driver: label and write them there
        def write(keep: list[int], path: str) -> None:
            write_assignment_rows(sample_ids, sample_x, {k: fits[k].centres for k in keep}, pivot=pivot, path=path)
    elif prep.files is not None and prep.row_id_given:
        def write(keep: list[int], path: str) -> None:
            write_assignment_files(pass_engine(run.engine, spark), prep.files, {k: fits[k].centres for k in keep},
                                   pivot=pivot, path=path)
    method_rows = {
        "summary_lloyd": prep.rows, "evaluation": prep.rows, "silhouette_sample": n_sil if sil else 0,
        "gap": int(gap_info["rows"]) if gap_info else 0,
    }
    return Sweep(
        results, skipped, {m: round(s, 3) for m, s in secs.items()}, method_rows, gap_info, sample_ids, sample_x,
        label_sample=lambda k: sample_labels[:, index[k]],
        assignments=lambda keep: assignments(prep.frame, {k: fits[k].centres for k in keep}, pivot=pivot),
        write_assignments=write,
        assignments_on_driver=fitted.local,
        details={"summary_rows": fitted.summary_rows, "passes": max((f.n_iter for f in fits.values()), default=0) + 1,
                 "passes_on": "driver" if fitted.local else "files" if prep.files else "spark",
                 "silhouette_sample_rows": n_sil},
    )


def _costs(frame: DataFrame, rows: int, ks: list[int], key: list[str], settings: ClusterEvalSettings, run: Run,
           label: str) -> list[float]:
    fitted = fit_all(frame, ks, settings, run, rows=rows, key=key, label=label)
    return [fitted.fits[k].inertia if k in fitted.fits else math.nan for k in ks]


def assignments(frame: DataFrame, centres: dict[int, np.ndarray], *, pivot: np.ndarray) -> DataFrame:
    """``_row_id, k, cluster`` for every row and every k of ``centres`` (pivoted), one pass."""
    import pyarrow as pa

    ks = sorted(centres)
    bank = lloyd.Bank.stack([centres[k] for k in ks])
    names = feature_columns(len(pivot))

    def label(batches):
        for b in batches:
            if not b.num_rows:
                continue
            x = np.column_stack([b.column(c).to_numpy() for c in names]).astype(np.float64, copy=False)
            with _threads_one():
                lab = lloyd.labels_for(x, pivot=pivot, bank=bank)
            ids = b.column(ROW_ID).to_numpy()
            yield pa.RecordBatch.from_pydict({
                ROW_ID: pa.array(np.repeat(ids, len(ks)), pa.int64()),
                "k": pa.array(np.tile(np.array(ks, dtype=np.int32), b.num_rows)),
                "cluster": pa.array(lab.ravel().astype(np.int32)),
            })

    return frame.select(ROW_ID, *names).mapInArrow(label, f"{ROW_ID} long, k int, cluster int")


def _labelled(ids: np.ndarray, x: np.ndarray, ks: list[int], bank: lloyd.Bank, pivot: np.ndarray) -> dict[str, np.ndarray]:
    """``_row_id, k, cluster`` columns of rows ``x`` (ids ``ids``) for every k of ``bank``,
    labelled in batches of :data:`passes.BATCH_ROWS`, as the passes label them."""
    with _threads_one():
        lab = np.vstack([lloyd.labels_for(x[s:s + passes.BATCH_ROWS], pivot=pivot, bank=bank)
                         for s in range(0, x.shape[0], passes.BATCH_ROWS)] or [np.zeros((0, len(ks)), np.int64)])
    return {ROW_ID: np.repeat(ids.astype(np.int64), len(ks)), "k": np.tile(np.array(ks, dtype=np.int32), ids.shape[0]),
            "cluster": lab.ravel().astype(np.int32)}


def write_assignment_rows(ids: np.ndarray, x: np.ndarray, centres: dict[int, np.ndarray], *, pivot: np.ndarray,
                          path: str) -> None:
    """The ``assignments`` table of :func:`assignments` for rows held on the driver (the
    whole input, when its passes ran there): one commit (overwrite), no Spark job for a
    path table."""
    import pyarrow as pa

    from pipelines import delta

    ks = sorted(centres)
    cols = _labelled(ids, x, ks, lloyd.Bank.stack([centres[k] for k in ks]), pivot)
    order = np.lexsort((cols[ROW_ID], cols["k"]))  # by k, then row id: one file per k, in id order
    table = pa.table({name: pa.array(v[order]) for name, v in cols.items()})
    delta.write_polars(table, path, mode="overwrite", partition_by=["k"])


def write_assignment_files(engine: Engine, files: FileInput, centres: dict[int, np.ndarray], *,
                           pivot: np.ndarray, path: str) -> None:
    """The ``assignments`` table of :func:`assignments`, written by the engine's tasks: each
    reads an input file, labels its rows and writes Parquet files; one commit (overwrite)."""
    import polars as pl

    from pipelines.engine import Sink, arrow_schema

    ks = sorted(centres)
    bank = lloyd.Bank.stack([centres[k] for k in ks])

    def label(frame: pl.DataFrame) -> pl.DataFrame:
        kept, x = files.rows(frame)
        ids = frame[ROW_ID].cast(pl.Int64).to_numpy()
        return pl.DataFrame(_labelled(ids if kept is None else ids[kept], x, ks, bank, pivot))

    schema = arrow_schema({ROW_ID: pl.Int64, "k": pl.Int32, "cluster": pl.Int32})
    engine.map(files.path, label, [Sink(path, schema, ("k",))], columns=[ROW_ID, *files.columns],
                               version=files.version)
