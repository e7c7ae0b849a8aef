"""The drift stage: how far each column of a table version moved from a baseline.

Passes, both versions in each (nothing but small per-column results reaches the driver):

1. **Profile** (:func:`continuous_pass`, first pass), one Spark task per file of either
   version (:mod:`pipelines.engine`'s units; numpy over pyarrow batches, no shuffle): row,
   null, NaN and +-inf counts, mean and population std of the finite values, min, max,
   the log-likelihood sums under a fitted GMM, and exact counts of the finite values in
   2**16 buckets of their order-preserving 64-bit keys.
2. **KS refinement** (``ks_refine``), continuous columns: the buckets bound the KS
   statistic; the buckets that may still hold it, or that hold a baseline quantile rank,
   are split into finer buckets or have their distinct values collected, in further
   passes over the pending columns only, until the KS statistic and the baseline's
   quantiles at ``k / bins`` (the PSI edges, with tokenize's edge collapsing) are exact
   (:class:`pipelines.drift.kernels.Refiner`; typically one or two passes). The PSI bin
   counts follow from the same buckets.
3. **Categories**, categorical columns: a null-count aggregation and one
   ``groupBy(column, value, sample).count()``.

The PSI edges are the baseline's exact inverted-CDF quantiles: what ``percentile_approx``
(tokenize's machinery) returns when it is exact, here at any size and independent of the
partitioning.

A column drifted when its PSI exceeds ``psi_threshold`` or, where a GMM fit exists, its
mean log-likelihood per row under the fitted mixture dropped by more than
``loglik_threshold`` nats from the baseline's (model-fit drift, seen even at low PSI).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines import delta, engine, fs
from pipelines.drift import kernels as K
from pipelines.errors import UserError
from pipelines.gmm.em import Mixture
from pipelines.gmm.fit import SUCCEEDED, _is_numeric, _quote, load_models, read_status
from pipelines.tokenize.kernels import quantile_edges, quantile_probabilities

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from pipelines.config import DriftSettings
    from pipelines.gmm.model import ColumnModel
    from pipelines.runs import Run

MAX_CATEGORIES = 100_000
TOP = 10  # unseen / vanished categories named
SUMMARY = "summary.json"
_VERSION = re.compile(r"^(?P<path>.+)@(?P<version>\d+)$")

RESULT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("computed_at", pa.timestamp("us", tz="UTC")),
    ("column", pa.string()), ("kind", pa.string()),
    ("baseline_table", pa.string()), ("baseline_version", pa.int64()),
    ("current_table", pa.string()), ("current_version", pa.int64()),
    ("rows_baseline", pa.int64()), ("rows_current", pa.int64()),
    ("psi", pa.float64()), ("bins", pa.int32()),
    ("ks_statistic", pa.float64()), ("ks_pvalue", pa.float64()),
    ("chi2_statistic", pa.float64()), ("chi2_pvalue", pa.float64()),
    ("null_rate_baseline", pa.float64()), ("null_rate_current", pa.float64()), ("null_rate_change", pa.float64()),
    ("nan_rate_baseline", pa.float64()), ("nan_rate_current", pa.float64()), ("nan_rate_change", pa.float64()),
    ("inf_rate_baseline", pa.float64()), ("inf_rate_current", pa.float64()), ("inf_rate_change", pa.float64()),
    ("mean_baseline", pa.float64()), ("mean_current", pa.float64()), ("mean_change", pa.float64()),
    ("std_baseline", pa.float64()), ("std_current", pa.float64()), ("std_change", pa.float64()),
    ("loglik_baseline", pa.float64()), ("loglik_current", pa.float64()), ("loglik_drop", pa.float64()),
    ("unseen_categories", pa.int64()), ("vanished_categories", pa.int64()),
    ("unseen_top", pa.list_(pa.string())), ("vanished_top", pa.list_(pa.string())),
    ("drifted", pa.bool_()), ("reason", pa.string()),
])


# ---------------------------------------------------------------------------- tables and versions


@dataclass(frozen=True)
class TableVersion:
    """A Delta table at one version."""

    path: str
    version: int

    def __str__(self) -> str:
        return f"{self.path}@{self.version}"


def parse_table_version(text: str, *, flag: str) -> TableVersion:
    """``TABLE`` or ``TABLE@VERSION`` -> the table at that version (default: its latest).

    Raises
    ------
    UserError
        The table does not exist, or has no such version.
    """
    m = _VERSION.match(text)
    path, version = (m["path"], int(m["version"])) if m else (text, None)
    if not delta.table_exists(path):
        raise UserError(f"{flag} {path}: not a Delta table")
    latest = delta.table_version(path)
    if version is None:
        return TableVersion(path, latest)
    if version > latest:
        raise UserError(f"{flag} {path}: no version {version} (latest is {latest})")
    delta.scan_table(path, version=version)  # a version whose log was cleaned up fails here, in one line
    return TableVersion(path, version)


# ---------------------------------------------------------------------------- the passes


def _finite(name: str) -> Column:
    from pyspark.sql import functions as F

    x = F.col(_quote(name)).cast("double")
    # -0.0 and 0.0 are one value (as for numpy's comparisons)
    return F.when(~F.isnan(x) & (F.abs(x) != float("inf")), F.when(x == 0, F.lit(0.0)).otherwise(x))


def profile(
    df: DataFrame,
    continuous: Sequence[str],
    categorical: Sequence[str],
    *,
    probabilities: Mapping[str, Sequence[float]],
    relative_error: float,
) -> tuple[int, dict[str, dict[str, Any]]]:
    """One aggregation: the row count and, per column, special-value counts, moments and quantiles.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    continuous, categorical : sequence of str
    probabilities : mapping of column -> probabilities
        ``percentile_approx`` of the finite values at these probabilities (none: skipped).
    relative_error : float
        ``percentile_approx`` runs with ``accuracy = ceil(1 / relative_error)``.

    Returns
    -------
    rows : int
    columns : dict of column -> dict
        ``null``, ``nan``, ``inf``, ``finite``, ``mean``, ``std`` (population), ``min``, ``max`` and ``quantiles``
        for continuous columns; ``null`` for categorical ones.
    """
    from pyspark.sql import functions as F

    accuracy = math.ceil(1.0 / relative_error)
    aggs = [F.count(F.lit(1)).alias("rows")]
    for i, name in enumerate(continuous):
        x, v = F.col(_quote(name)).cast("double"), _finite(name)
        aggs += [
            F.count(F.when(x.isNull(), 1)).alias(f"null{i}"),
            F.count(F.when(F.isnan(x), 1)).alias(f"nan{i}"),
            F.count(F.when(F.abs(x) == float("inf"), 1)).alias(f"inf{i}"),
            F.count(v).alias(f"finite{i}"),
            F.avg(v).alias(f"mean{i}"),
            F.stddev_pop(v).alias(f"std{i}"),
            F.min(v).alias(f"min{i}"),
            F.max(v).alias(f"max{i}"),
        ]
        if probabilities.get(name):
            aggs.append(F.percentile_approx(v, list(probabilities[name]), accuracy).alias(f"q{i}"))
    for i, name in enumerate(categorical):
        aggs.append(F.count(F.when(F.col(_quote(name)).isNull(), 1)).alias(f"cnull{i}"))
    row = df.agg(*aggs).first()  # one row: a few numbers per column
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(continuous):
        out[name] = {k: row[f"{k}{i}"] for k in ("null", "nan", "inf", "finite", "mean", "std", "min", "max")}
        out[name]["quantiles"] = list(row[f"q{i}"] or []) if probabilities.get(name) else []
    for i, name in enumerate(categorical):
        out[name] = {"null": row[f"cnull{i}"], "nan": 0, "inf": 0}
    return int(row["rows"]), out


def _encode(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # numeric arrays only: no pickle
    return buf.getvalue()


def _decode(data: bytes) -> dict[str, np.ndarray]:
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def scan(
    spark: SparkSession,
    tables: Sequence[TableVersion],
    columns: Sequence[str],
    buckets: Sequence[Sequence[K.Buckets]] | Sequence[K.Buckets],
    *,
    profile: bool = False,
    mixtures: Sequence[Any] = (),
    batch_rows: int = engine.DEFAULT_BATCH_ROWS,
) -> list[list[dict[str, np.ndarray]]]:
    """One pass over the files of each table version (one Spark task per file, or run of
    row groups, as :mod:`pipelines.engine`): :class:`pipelines.drift.kernels.TaskScan` per task.

    Returns, per table version, a list of its tasks' results merged into one in file order
    (:func:`pipelines.drift.kernels.merge_task_results`; empty without files): a few arrays
    per column, whatever the number of files.
    """
    sources = [engine.source(t.path, version=t.version) for t in tables]
    tasks = [(s, i) for s, src in enumerate(sources) for i in range(len(src.units))]
    if not tasks:
        return [[] for _ in tables]
    engine._bound_worker_threads(spark)
    cols = tuple(columns)
    specs = list(buckets)

    def run_tasks(batches):
        for batch in batches:
            for index in batch.column(0).to_pylist():
                sample, unit_index = tasks[index]
                src = sources[sample]
                unit = src.units[unit_index]
                state = K.TaskScan(cols, specs, profile=profile, mixtures=mixtures)
                try:
                    for frame in engine._read_unit(unit, src.schema, cols, batch_rows):
                        state.update(frame)
                    data, error = _encode(state.result()), None
                except Exception as exc:  # named by its file, raised on the driver
                    data, error = None, f"{unit.label()}: {type(exc).__name__}: {exc}"
                yield pa.RecordBatch.from_pylist([{"task": index, "error": error, "data": data}], schema=_SCAN_SCHEMA)

    # One small row per file, folded on the driver in file order, so the result does not depend
    # on the partitioning. The files run as Spark jobs of `chunk` tasks each: every job runs its
    # files in parallel (toLocalIterator would run one partition, i.e. one file, at a time), and
    # the driver holds at most one job's rows, whatever the number of files.
    chunk = _chunk_tasks(spark)
    out: list[dict[str, np.ndarray] | None] = [None for _ in tables]
    failed = []
    for start in range(0, len(tasks), chunk):
        end = min(start + chunk, len(tasks))
        rows = (spark.range(start, end, numPartitions=end - start)
                .mapInArrow(run_tasks, "task int, error string, data binary").collect())
        for r in sorted(rows, key=lambda r: r["task"]):
            if r["error"]:
                failed.append(r["error"])
                continue
            sample = tasks[r["task"]][0]
            out[sample] = K.merge_task_results(out[sample], _decode(r["data"]))
    if failed:
        raise RuntimeError(failed[0] + (f" (and {len(failed) - 1} more file(s))" if len(failed) > 1 else ""))
    return [[] if o is None else [o] for o in out]


def _chunk_tasks(spark: SparkSession) -> int:
    """Files per Spark job of :func:`scan`: at least 64, and twice the session's parallelism."""
    try:
        return max(64, 2 * int(spark.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect: no SparkContext on the client
        return 64


_SCAN_SCHEMA = pa.schema([("task", pa.int32()), ("error", pa.string()), ("data", pa.binary())])


def _column_results(results: Sequence[dict[str, np.ndarray]], i: int) -> list[dict[str, np.ndarray]]:
    prefix = f"{i}."
    return [{k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)} for r in results]


def continuous_pass(
    spark: SparkSession,
    baseline: TableVersion,
    current: TableVersion,
    columns: Sequence[str],
    *,
    probabilities: Sequence[float],
    mixtures: Sequence[Any],
    run: Run,
    max_passes: int = 32,
) -> tuple[tuple[int, int], dict[str, dict[str, Any]]]:
    """Profile, exact KS, exact PSI edges and bin counts and log-likelihoods of continuous columns.

    The first pass (``profile``) counts rows, nulls, NaN, +-inf, the moments and the
    first-level buckets of both versions; then :class:`pipelines.drift.kernels.Refiner`
    passes (``ks_refine``) read only the columns still pending, until every column's KS
    statistic and baseline quantiles are exact.

    Returns
    -------
    (rows_baseline, rows_current), and per column: the profile (``null``, ``nan``,
    ``inf``, ``finite``, ``mean``, ``std``, ``min``, ``max``), ``ks_statistic``,
    ``inner_edges``, ``bins0`` / ``bins1``, ``ll0`` / ``ll1`` and ``passes``.
    """
    tables = (baseline, current)
    with run.timed("profile"):
        first = scan(spark, tables, columns, [K.Buckets.top()] * len(columns), profile=True, mixtures=mixtures)
    merged = [K.merge_profiles(r) for r in first]
    rows = (merged[0][0], merged[1][0])
    out: dict[str, dict[str, Any]] = {}
    refiners: dict[str, K.Refiner] = {}
    for i, c in enumerate(columns):
        profs = []
        for _, st in merged:
            st = st[i] if st is not None else np.zeros(10)
            n = int(st[3])
            profs.append({"null": int(st[0]), "nan": int(st[1]), "inf": int(st[2]), "finite": n,
                          "mean": float(st[4]) if n else None, "std": math.sqrt(st[5] / n) if n else None,
                          "min": float(st[6]) if n else None, "max": float(st[7]) if n else None,
                          "ll": float(st[8]) / st[9] if st[9] else float("nan")})
        out[c] = {"p0": profs[0], "p1": profs[1], "passes": 1,
                  "ll0": profs[0]["ll"] if mixtures[i] is not None else float("nan"),
                  "ll1": profs[1]["ll"] if mixtures[i] is not None else float("nan")}
        counts = [sum((r["counts"] for r in _column_results(first[s], i)), np.zeros(1 << (64 - K.TOP_SHIFT), np.int64))
                  for s in (0, 1)]
        refiners[c] = K.Refiner(profs[0]["finite"], profs[1]["finite"], probabilities, *counts)
    with run.timed("ks_refine"):
        for _ in range(max_passes):
            plans = {c: r.plan() for c, r in refiners.items()}
            todo = [c for c, b in plans.items() if b is not None]
            if not todo:
                break
            res = scan(spark, tables, todo, [plans[c] for c in todo])
            for i, c in enumerate(todo):
                refiners[c].apply(_column_results(res[0], i), _column_results(res[1], i))
                out[c]["passes"] += 1
        else:
            raise RuntimeError(f"KS refinement did not finish in {max_passes} passes")
    for c, ref in refiners.items():
        p0 = out[c]["p0"]
        inner = (quantile_edges(p0["min"], ref.quantiles(), p0["max"])[1:-1] if p0["finite"] else np.zeros(0))
        bins0, bins1 = ref.bin_counts(inner)
        out[c].update(ks_statistic=ref.statistic(), inner_edges=inner, bins0=bins0, bins1=bins1)
    return rows, out


def category_counts(baseline: DataFrame, current: DataFrame, columns: Sequence[str]) -> dict[str, tuple[dict, dict]]:
    """Per categorical column: ``({category: baseline count}, {category: current count})``; null is a category."""
    from pyspark.sql import functions as F

    def long(df: DataFrame, sample: bool) -> DataFrame:
        cells = [F.struct(F.lit(i).alias("c"), F.col(_quote(n)).cast("string").alias("v")) for i, n in enumerate(columns)]
        return df.select(F.explode(F.array(*cells)).alias("r")).select("r.c", "r.v", F.lit(sample).alias("s"))

    limit = MAX_CATEGORIES * 2 * len(columns)
    rows = (long(baseline, False).unionByName(long(current, True)).groupBy("c", "v", "s").count()
            .limit(limit + 1).toArrow().to_pylist())  # bounded by the limit
    if len(rows) > limit:
        raise UserError(f"categorical column(s) {', '.join(columns)}: more than {MAX_CATEGORIES} categories")
    out: dict[str, tuple[dict, dict]] = {name: ({}, {}) for name in columns}
    for r in rows:
        out[columns[r["c"]]][int(r["s"])][r["v"]] = int(r["count"])
    return out


# ---------------------------------------------------------------------------- columns and models


def mixture_of(model: ColumnModel) -> tuple[Mixture, tuple[float, ...]] | None:
    """The fitted mixture of a continuous or mixed column (kept Gaussians, weights renormalised) and its special values."""
    gaussians = [m for m in model.kept if m.kind == "gaussian"]
    if model.column_type == "categorical" or not gaussians:
        return None
    w = np.array([m.weight for m in gaussians], dtype=np.float64)
    mixture = Mixture(weights=w / w.sum(), means=np.array([m.mean for m in gaussians]),
                      stds=np.array([m.std for m in gaussians]))
    return mixture, tuple(float(m.value_double) for m in model.kept if m.kind == "special")


def _kinds(dtypes: Mapping[str, str], columns: Sequence[str], categorical: Sequence[str],
           models: Mapping[str, ColumnModel]) -> dict[str, str]:
    kinds = {}
    for c in columns:
        if c in models:
            kinds[c] = "categorical" if models[c].column_type == "categorical" else "continuous"
        else:
            kinds[c] = "categorical" if c in categorical or not _is_numeric(dtypes[c]) else "continuous"
    return kinds


# ---------------------------------------------------------------------------- one comparison


def compare(
    spark: SparkSession,
    baseline: TableVersion,
    current: TableVersion,
    columns: Sequence[str],
    kinds: Mapping[str, str],
    models: Mapping[str, ColumnModel],
    s: DriftSettings,
    run: Run,
) -> list[dict[str, Any]]:
    """Drift of ``columns`` from ``baseline`` to ``current``: one result row per column (:data:`RESULT_SCHEMA`)."""
    base_df = delta.read_table(spark, baseline.path, version=baseline.version)
    cur_df = delta.read_table(spark, current.path, version=current.version)
    for df, ref in ((base_df, baseline), (cur_df, current)):
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(f"{ref}: column(s) not found: {', '.join(missing)} (has {', '.join(df.columns)})")
    cont = [c for c in columns if kinds[c] == "continuous"]
    cat = [c for c in columns if kinds[c] == "categorical"]
    psi_probs = quantile_probabilities(s.bins)

    results: dict[str, dict[str, Any]] = {}
    prof0: dict[str, dict[str, Any]] = {}
    prof1: dict[str, dict[str, Any]] = {}
    rows0 = rows1 = None
    if cont:
        fitted = [mixture_of(models[c]) if c in models else None for c in cont]
        (rows0, rows1), got = continuous_pass(spark, baseline, current, cont, probabilities=psi_probs,
                                              mixtures=fitted, run=run)
        for c in cont:
            r = results[c] = got[c]
            prof0[c], prof1[c] = r["p0"], r["p1"]
            r["psi"] = K.psi(r["bins0"], r["bins1"])
            r["n_bins"] = r["inner_edges"].size + 1
            r["ks_pvalue"] = K.ks_pvalue(r["ks_statistic"], r["p0"]["finite"], r["p1"]["finite"])
            r["edges"] = r["inner_edges"]
            run.details.setdefault("ks_passes", {})[c] = r["passes"]
    if cat:
        with run.timed("profile_categories"):
            n0, cprof0 = profile(base_df, [], cat, relative_error=s.relative_error, probabilities={})
            n1, cprof1 = profile(cur_df, [], cat, relative_error=s.relative_error, probabilities={})
        prof0.update(cprof0)
        prof1.update(cprof1)
        rows0, rows1 = n0, n1
    if cat:
        with run.timed("categories"):
            counts = category_counts(base_df, cur_df, cat)
        for c in cat:
            ref, cur = counts[c]
            keys = sorted(set(ref) | set(cur), key=lambda k: (k is None, k or ""))
            a = [ref.get(k, 0) for k in keys]
            b = [cur.get(k, 0) for k in keys]
            chi2, chi2_p = K.chi_square(a, b)
            unseen = sorted((k for k in cur if k not in ref), key=lambda k: (-cur[k], str(k)))
            vanished = sorted((k for k in ref if k not in cur), key=lambda k: (-ref[k], str(k)))
            results[c] = {"psi": K.psi(a, b), "n_bins": len(keys), "chi2_statistic": chi2, "chi2_pvalue": chi2_p,
                          "categories": keys, "bins0": np.array(a), "bins1": np.array(b),
                          "unseen": unseen, "vanished": vanished}

    computed_at = datetime.fromisoformat(run.started_at)  # one time per run
    out = []
    for c in columns:
        r, p0, p1 = results[c], prof0[c], prof1[c]
        row = {
            "run_id": run.run_id, "computed_at": computed_at, "column": c, "kind": kinds[c],
            "baseline_table": baseline.path, "baseline_version": baseline.version,
            "current_table": current.path, "current_version": current.version,
            "rows_baseline": rows0, "rows_current": rows1, "psi": r["psi"], "bins": r["n_bins"],
            "ks_statistic": r.get("ks_statistic"), "ks_pvalue": r.get("ks_pvalue"),
            "chi2_statistic": r.get("chi2_statistic"), "chi2_pvalue": r.get("chi2_pvalue"),
        }
        for k in ("null", "nan", "inf"):
            b = p0[k] / rows0 if rows0 else float("nan")
            a = p1[k] / rows1 if rows1 else float("nan")
            row.update({f"{k}_rate_baseline": b, f"{k}_rate_current": a, f"{k}_rate_change": a - b})
        if kinds[c] == "continuous":
            for k in ("mean", "std"):
                b, a = _float(p0[k]), _float(p1[k])
                row.update({f"{k}_baseline": b, f"{k}_current": a, f"{k}_change": a - b})
            row.update(loglik_baseline=_float(r["ll0"]), loglik_current=_float(r["ll1"]),
                       loglik_drop=_float(r["ll0"]) - _float(r["ll1"]))
        else:
            row.update(unseen_categories=len(r["unseen"]), vanished_categories=len(r["vanished"]),
                       unseen_top=[str(k) for k in r["unseen"][:TOP]],
                       vanished_top=[str(k) for k in r["vanished"][:TOP]])
        row["drifted"], row["reason"] = verdict(row, psi_threshold=s.psi_threshold, loglik_threshold=s.loglik_threshold)
        row["_plot"] = r  # bin shares (and edges) for the report; not stored
        out.append(row)
    return out


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def verdict(row: Mapping[str, Any], *, psi_threshold: float, loglik_threshold: float) -> tuple[bool, str]:
    """``(drifted, reason)``: PSI above its threshold, or a log-likelihood drop above its threshold."""
    reasons = []
    psi = row["psi"]
    if psi is not None and np.isfinite(psi) and psi > psi_threshold:
        reasons.append(f"psi {psi:.4g} > {psi_threshold:g}")
    drop = row.get("loglik_drop")
    if drop is not None and np.isfinite(drop) and drop > loglik_threshold:
        reasons.append(f"log-likelihood per row fell by {drop:.4g} > {loglik_threshold:g} nats under the fitted GMM")
    if reasons:
        return True, "; ".join(reasons)
    return False, f"stable: psi {psi:.4g} <= {psi_threshold:g}" if psi is not None and np.isfinite(psi) else "no rows"


# ---------------------------------------------------------------------------- the stage


def read_summary(drift_dir: str) -> dict[str, Any]:
    """The ``summary.json`` of the last drift run written to ``drift_dir``."""
    path = fs.join(drift_dir, SUMMARY)
    if not fs.exists(path):
        raise UserError(f"{path}: no drift summary (run jobs/drift.py --output {drift_dir} first)")
    return json.loads(fs.read_text(path))


def _fit_baselines(s: DriftSettings, columns: Sequence[str] | None) -> tuple[dict[str, TableVersion], list[str]]:
    """Per fitted column, the table version its fit was trained on; and the columns with no fit yet."""
    status = {c: r for c, r in read_status(s.baseline_fit).items() if r["status"] == SUCCEEDED}
    wanted = list(columns) if columns else sorted(status)
    out, unfitted = {}, []
    for c in wanted:
        row = status.get(c)
        if row is None:
            unfitted.append(c)
        elif row.get("input_table") is None or row.get("input_version") is None:
            raise UserError(f"{s.baseline_fit}: column '{c}' was fitted without recording its input table version; "
                            "refit it with gmm_fit --only")
        else:
            out[c] = parse_table_version(f"{row['input_table']}@{row['input_version']}", flag="--baseline-fit")
    return out, unfitted


def run(spark: SparkSession, s: DriftSettings, run: Run) -> None:
    """The ``drift`` stage (see the module doc); the results go to ``OUT/drift`` and ``OUT/summary.json``."""
    if not s.current:
        raise UserError("drift.current: required (--current TABLE[@VERSION])")
    if (s.baseline is None) == (s.baseline_fit is None):
        raise UserError("drift: give exactly one of --baseline TABLE@VERSION and --baseline-fit FIT_DIR")
    current = parse_table_version(s.current, flag="--current")
    cur_cols = delta.table_schema(current.path).names

    models: dict[str, ColumnModel] = {}
    fit_dir = s.baseline_fit or s.fit_dir
    unfitted: list[str] = []
    if s.baseline_fit:
        baselines, unfitted = _fit_baselines(s, s.columns)
        columns = list(s.columns or baselines)
        if not columns:
            # nothing fitted yet: every column of the current table is new to the model
            unfitted = [c for c in cur_cols if not c.startswith("_")]
            columns = []
    else:
        ref = parse_table_version(s.baseline, flag="--baseline")
        columns = list(s.columns or [c for c in cur_cols if not c.startswith("_")])
        baselines = {c: ref for c in columns}
    missing = [c for c in columns if c not in cur_cols]
    if missing:
        raise UserError(f"{current}: column(s) not found: {', '.join(missing)} (has {', '.join(cur_cols)})")
    if fit_dir and baselines:
        ready = [c for c, r in read_status(fit_dir).items() if r["status"] == SUCCEEDED and c in baselines]
        models = load_models(fit_dir, columns=ready) if ready else {}

    dtypes = dict(delta.read_table(spark, current.path, version=current.version).dtypes)
    kinds = _kinds(dtypes, list(baselines), s.categorical, models)
    rows: list[dict[str, Any]] = []
    by_baseline: dict[TableVersion, list[str]] = {}
    for c in columns:
        if c in baselines:
            by_baseline.setdefault(baselines[c], []).append(c)
    for ref, cols in by_baseline.items():
        run.progress(f"{len(cols)} column(s): {ref} -> {current}")
        rows += compare(spark, ref, current, cols, kinds, models, s, run)
    for c in unfitted:
        rows.append({"run_id": run.run_id, "computed_at": datetime.fromisoformat(run.started_at), "column": c, "kind": None,
                     "current_table": current.path, "current_version": current.version, "drifted": True,
                     "reason": f"no fitted model in {s.baseline_fit}"})

    with run.timed("write"):
        _write_outputs(rows, s, run, current=current)


def _write_outputs(rows: list[dict[str, Any]], s: DriftSettings, run: Run, *, current: TableVersion) -> None:
    from pipelines.drift.report import write_report

    table_path = fs.join(s.output, "drift")
    stored = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if stored:
        delta.write_polars(pa.Table.from_pylist(stored, schema=RESULT_SCHEMA), table_path, mode="append")
    drifted = [r["column"] for r in rows if r["drifted"]]
    summary = {
        "run_id": run.run_id, "current": str(current), "psi_threshold": s.psi_threshold,
        "loglik_threshold": s.loglik_threshold, "drifted": drifted,
        "columns": {r["column"]: {k: _json(v) for k, v in r.items()
                                  if not k.startswith("_") and k not in ("run_id", "computed_at", "column")}
                    for r in rows},
    }
    fs.write_text(fs.join(s.output, SUMMARY), json.dumps(summary, indent=2))
    run.outputs.update(drift=table_path, summary=fs.join(s.output, SUMMARY), **write_report(s.output, rows))
    run.counts.update(columns=len(rows), drifted=len(drifted))
    run.details["drifted"] = drifted
    run.progress(f"{len(drifted)} of {len(rows)} column(s) drifted" + (f": {', '.join(drifted)}" if drifted else ""))


def _json(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
