"""Input for cluster_eval: reading, the built-in default dataset, feature checks,
null/NaN/inf handling, scaling, and deterministic bounded samples.

Every step is a Spark transformation or a one-row aggregation; the only rows that
reach the driver are a seeded sample of at most a configured size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import delta, fs
from pipelines.columns import ROW_ID, default_columns
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from pipelines.config import ClusterEvalSettings
    from pipelines.engine import Engine
    from pipelines.runs import Run

FEATURES = "features"

# The built-in dataset: well-separated Gaussian blobs with a known number of clusters.
DEFAULT_ROWS = 20_000
DEFAULT_K = 4
DEFAULT_DIMS = 5
DEFAULT_SEED = 20240601
_MIN_CENTER_GAP = 9.0

_HASH_MASK = (1 << 53) - 1


_P1, _P2, _P3, _P4, _P5 = (np.uint64(v) for v in (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                                                   0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5))


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def _xxhash_int(value: int, h: np.ndarray) -> np.ndarray:
    """Spark's ``XXH64.hashInt`` of one 32-bit value, seeded with each ``h``."""
    h = h + _P5 + np.uint64(4)
    h = h ^ (np.uint64(value & 0xFFFFFFFF) * _P1)
    return _fmix(_rotl(h, 23) * _P2 + _P3)


def _xxhash_long(values: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Spark's ``XXH64.hashLong`` of each 64-bit value, seeded with ``h``."""
    h = h + _P5 + np.uint64(8)
    h = h ^ (_rotl(values.astype(np.int64).view(np.uint64) * _P2, 31) * _P1)
    return _fmix(_rotl(h, 27) * _P1 + _P4)


def hash_uniform_ids(seed: int, row_ids: np.ndarray, salt: int) -> np.ndarray:
    """:func:`hash_uniform` of ``(lit(seed), row id as long, lit(salt))`` computed in numpy,
    bit for bit: Spark's ``xxhash64`` chains each value's hash from seed 42, hashing an
    int literal as 4 bytes and a long as 8 (a seed outside int32 is a long literal)."""
    with np.errstate(over="ignore"):
        h = np.full(row_ids.shape, 42, dtype=np.uint64)
        h = _xxhash_int(seed, h) if -(1 << 31) <= seed < (1 << 31) else _xxhash_long(np.full(row_ids.shape, seed), h)
        h = _xxhash_int(salt, _xxhash_long(row_ids, h))
    return ((h & np.uint64(_HASH_MASK)).astype(np.float64) + 0.5) / float(1 << 53)


def hash_uniform(*cols: Column) -> Column:
    """A uniform draw in (0, 1) from a 64-bit hash of ``cols``.

    Depends only on the values hashed (seed, row id, ...), so draws do not change with
    the partitioning, unlike ``F.rand``.
    """
    from pyspark.sql import functions as F

    return ((F.xxhash64(*cols).bitwiseAND(F.lit(_HASH_MASK)).cast("double") + 0.5) / float(1 << 53))


def hash_normal(*cols: Column) -> Column:
    """A standard normal draw (Box-Muller on two hash uniforms of ``cols``)."""
    from pyspark.sql import functions as F

    u1 = hash_uniform(*cols, F.lit(1))
    u2 = hash_uniform(*cols, F.lit(2))
    return F.sqrt(-2.0 * F.log(u1)) * F.cos(2.0 * math.pi * u2)


def blob_centers(k: int, dims: int, *, seed: int, min_gap: float = _MIN_CENTER_GAP) -> np.ndarray:
    """``k`` centers in ``[-10, 10]^dims``, pairwise at least ``min_gap`` apart (seeded)."""
    rng = np.random.default_rng(seed)
    centers: list[np.ndarray] = []
    while len(centers) < k:
        c = rng.uniform(-10.0, 10.0, dims)
        if all(np.linalg.norm(c - o) >= min_gap for o in centers):
            centers.append(c)
    return np.vstack(centers)


def make_blobs(
    spark: SparkSession,
    *,
    rows: int = DEFAULT_ROWS,
    k: int = DEFAULT_K,
    dims: int = DEFAULT_DIMS,
    seed: int = DEFAULT_SEED,
    partitions: int | None = None,
) -> DataFrame:
    """Gaussian blobs generated in Spark: ``_row_id``, ``_true_cluster``, ``x0..x{dims-1}``.

    Deterministic: each value is a function of (seed, ``_row_id``, column), whatever
    the partitioning. Cluster ``c`` has standard deviation ``0.8 + 0.1 * (c % 5)``.

    Parameters
    ----------
    spark : SparkSession
    rows : int, default=20000
    k : int, default=4
        The true number of clusters.
    dims : int, default=5
    seed : int
    partitions : int, optional
        Number of partitions of ``spark.range`` (Spark's default parallelism if None).

    Returns
    -------
    pyspark.sql.DataFrame
    """
    from pyspark.sql import functions as F

    centers = blob_centers(k, dims, seed=seed)
    df = spark.range(0, rows, numPartitions=partitions).withColumnRenamed("id", ROW_ID)
    cluster = (hash_uniform(F.lit(seed), F.col(ROW_ID), F.lit(-1)) * k).cast("int")
    df = df.withColumn("_true_cluster", cluster)
    std = F.lit(0.8) + F.lit(0.1) * (F.col("_true_cluster") % 5)
    cols = []
    for j in range(dims):
        center_j = F.element_at(F.array(*[F.lit(float(c)) for c in centers[:, j]]), F.col("_true_cluster") + 1)
        cols.append((center_j + std * hash_normal(F.lit(seed), F.col(ROW_ID), F.lit(j))).alias(f"x{j}"))
    return df.select(ROW_ID, "_true_cluster", *cols)


def read_input(spark: SparkSession, settings: ClusterEvalSettings, run: Run) -> DataFrame:
    """The input DataFrame: ``settings.input`` (Delta, Parquet or CSV) or the built-in blobs."""
    if settings.input is None:
        run.details["dataset"] = {
            "name": "built-in Gaussian blobs",
            "rows": DEFAULT_ROWS,
            "true_k": DEFAULT_K,
            "dims": DEFAULT_DIMS,
            "seed": DEFAULT_SEED,
        }
        run.progress(f"no --input: using the built-in dataset ({DEFAULT_ROWS} rows, {DEFAULT_K} blobs)")
        return make_blobs(spark)
    path = settings.input
    if not delta.table_exists(path) and not fs.exists(path):  # a table name has no folder
        raise UserError(f"{path}: input not found")
    fmt = settings.format or _infer_format(path)
    run.details["dataset"] = {"name": path, "format": fmt}
    if fmt == "delta":  # pinned: every pass, Spark's or the engine's, reads this version
        version = delta.table_version(path) if delta._named(path) is None else None
        run.details["dataset"]["version"] = version
        return delta.read_table(spark, path, version=version)
    try:
        if fmt == "csv":
            return spark.read.option("header", True).option("inferSchema", True).csv(path)
        return spark.read.parquet(path)
    except Exception as exc:  # Spark's AnalysisException: unreadable or not this format
        raise UserError(f"{path}: cannot read as {fmt}: {str(exc).splitlines()[0]}") from None


def _infer_format(path: str) -> str:
    if delta.table_exists(path):
        return "delta"
    if path.lower().rstrip("/").endswith((".csv", ".csv.gz")):
        return "csv"
    return "parquet"


def _id_like(df: DataFrame, candidates: list[str], types: dict[str, Any], rows: Any = None) -> dict[str, str]:
    """Columns that look like row identifiers, with the reason: named like an id, or integer and unique per row.

    ``rows``: every row of ``df`` already on the driver (an Arrow table, see :func:`_collect`):
    the distinct values are counted there, exactly, instead of in a Spark job."""
    import re

    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegralType

    out = {c: "named like an id" for c in candidates if re.fullmatch(r"(?i)(.*_)?id", c)}
    ints = [c for c in candidates if c not in out and isinstance(types[c], IntegralType)]
    if ints and rows is not None:
        import pyarrow.compute as pc

        n = rows.num_rows
        out.update({c: "integer, unique per row" for c in ints
                    if n > 1 and pc.count_distinct(rows.column(c), mode="only_valid").as_py() >= 0.98 * n})
    elif ints:
        r = df.agg(F.count(F.lit(1)).alias("_n"),
                   *[F.approx_count_distinct(c, 0.01).alias(f"_d{i}") for i, c in enumerate(ints)]).first()
        # approx_count_distinct is within ~1% (rsd 0.01): 98% distinct integers is an id
        out.update({c: "integer, unique per row" for i, c in enumerate(ints) if r["_n"] > 1 and r[f"_d{i}"] >= 0.98 * r["_n"]})
    return out


def select_features(df: DataFrame, features: list[str] | None, *, source: str, run: Run | None = None,
                    rows: Any = None) -> list[str]:
    """The feature columns: the given ones (checked), or every numeric column that is not an id.

    By default, columns starting with ``_`` and ID-like columns (named ``id`` / ``*_id``,
    or integer and unique per row) are left out, with a warning naming them. ``rows``:
    every row on the driver (see :func:`_id_like`).

    Raises
    ------
    UserError
        A named column is missing or not numeric, or there is no numeric column.
    """
    from pyspark.sql.types import NumericType

    types = {f.name: f.dataType for f in df.schema.fields}
    if features is None:
        numeric = default_columns((c, isinstance(t, NumericType)) for c, t in types.items())
        ids = _id_like(df, numeric, types, rows)
        if ids and run is not None:
            run.warn(f"{source}: left out ID-like columns ({', '.join(f'{c}: {why}' for c, why in ids.items())}); "
                     "name them in --features to cluster on them")
        chosen = [c for c in numeric if c not in ids]
        if not chosen:
            raise UserError(f"{source}: no numeric columns (other than _-prefixed and ID-like ones) to cluster; "
                            f"columns: {list(types)}")
        return chosen
    for c in features:
        if c not in types:
            raise UserError(f"{source}: feature column '{c}' not found (columns: {list(types)})")
        if not isinstance(types[c], NumericType):
            raise UserError(f"{source}: feature column '{c}' is {types[c].simpleString()}, not numeric")
    if len(set(features)) != len(features):
        raise UserError(f"cluster_eval.features: duplicate column names in {features}")
    return list(features)


@dataclass
class Profile:
    """One aggregation over the input: row counts, bad values per column, and feature statistics."""

    rows: int
    invalid_rows: int
    bad_values: dict[str, int]
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray


def _bad(c: str) -> Column:
    from pyspark.sql import functions as F

    x = F.col(c).cast("double")
    return x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))


def _partition_moments(df: DataFrame, aggs: list[Column]) -> list[Any]:
    """``aggs`` per input partition, in partition order: one row per non-empty partition.

    Spark merges partial aggregates in the order the shuffle delivers them, so a mean or
    a variance can differ in the last bit between two runs of the same input (seen on a
    ``local-cluster`` master against ``local[2]``); 1-ulp shifts then change near-tie
    clusterings. Grouped by the partition id, each group has exactly one partial, built
    in row order, and the driver merges them in partition order: the same input files
    give bit-identical statistics on every master.
    """
    from pyspark.sql import functions as F

    rows = df.groupBy(F.spark_partition_id().alias("_part")).agg(*aggs).collect()
    return sorted(rows, key=lambda r: r["_part"])


def _vector(row: Any, name: str, d: int, empty: float = 0.0) -> np.ndarray:
    """Columns ``name0 .. name{d-1}`` of an aggregate row as floats (``empty`` for nulls)."""
    return np.array([empty if row[f"{name}{i}"] is None else float(row[f"{name}{i}"]) for i in range(d)])


def _merge_moments(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise merge of (count, mean, M2) per column, in the given order
    (zeros when there are no parts)."""
    if not parts:
        return np.zeros(d), np.zeros(d), np.zeros(d)
    n, mean, m2 = parts[0]
    for nb, mb, m2b in parts[1:]:
        total = n + nb
        w = np.divide(nb, total, out=np.zeros_like(total), where=total > 0)
        delta = mb - mean
        mean = mean + delta * w
        m2 = m2 + m2b + delta * delta * n * w
        n = total
    return n, mean, m2


def profile(df: DataFrame, features: list[str]) -> Profile:
    """Counts and per-feature mean, population std, min and max over the fully valid rows.

    Computed per partition and merged on the driver in partition order
    (:func:`_partition_moments`), so the scaling is bit-identical on every master.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    d = len(features)
    any_bad = reduce(lambda a, b: a | b, [_bad(c) for c in features])
    good = {c: F.when(~any_bad, F.col(c).cast("double")) for c in features}
    aggs = [F.count(F.lit(1)).alias("rows"), F.sum(any_bad.cast("long")).alias("invalid")]
    for i, c in enumerate(features):
        aggs += [
            F.sum(_bad(c).cast("long")).alias(f"bad{i}"),
            F.count(good[c]).alias(f"n{i}"),
            F.mean(good[c]).alias(f"mean{i}"),
            F.var_pop(good[c]).alias(f"var{i}"),
            F.min(good[c]).alias(f"min{i}"),
            F.max(good[c]).alias(f"max{i}"),
        ]
    return _profile_of(_partition_moments(df, aggs), d, features)


def _profile_of(parts: list[Any], d: int, features: list[str]) -> Profile:
    """The :class:`Profile` of per-partition aggregate rows (Spark's or :func:`_held_moments`'),
    merged in partition order."""
    counts = [_vector(r, "n", d) for r in parts]
    n, mean, m2 = _merge_moments([(c, _vector(r, "mean", d), c * _vector(r, "var", d))
                                  for c, r in zip(counts, parts, strict=True)], d)
    none = n == 0
    minimum = np.min([_vector(r, "min", d, np.inf) for r in parts], axis=0) if parts else np.full(d, np.inf)
    maximum = np.max([_vector(r, "max", d, -np.inf) for r in parts], axis=0) if parts else np.full(d, -np.inf)
    return Profile(
        rows=sum(int(r["rows"]) for r in parts),
        invalid_rows=sum(int(r["invalid"] or 0) for r in parts),
        bad_values={c: sum(int(r[f"bad{i}"] or 0) for r in parts) for i, c in enumerate(features)},
        mean=np.where(none, np.nan, mean),
        std=np.where(none, np.nan, np.sqrt(np.maximum(m2, 0.0) / np.where(none, 1.0, n))),
        minimum=np.where(none, np.nan, minimum),
        maximum=np.where(none, np.nan, maximum),
    )


def feature_columns(d: int) -> list[str]:
    """Names of the scaled feature columns of :attr:`Prepared.frame`."""
    return [f"_f{i}" for i in range(d)]


# Feature types whose cast to double is exact in numpy as in Spark (not decimals or strings).
_FILE_TYPES = ("double", "float", "bigint", "int", "smallint", "tinyint")


@dataclass(frozen=True)
class FileInput:
    """The prepared rows read straight from the input's Parquet files (no JVM in between).

    A pass of :mod:`pipelines.engine` opens each data file in its task and turns the raw
    feature columns into the clustering rows with numpy, exactly as :func:`prepare`'s
    Spark expressions do: cast to double, drop or mean-fill the rows with a null, NaN or
    infinite feature, then ``(x - shift) / scale``.
    """

    path: str
    version: int | None
    columns: tuple[str, ...]
    drop_invalid: bool
    fill: tuple[float, ...]  # per column: the mean imputed into its bad values (impute=mean)
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    def matrix(self, frame: Any) -> np.ndarray:
        """The (n, d) clustering rows of a Polars batch of the input."""
        return self.rows(frame)[1]

    def rows(self, frame: Any) -> tuple[np.ndarray | None, np.ndarray]:
        """``(kept, x)``: which rows of the batch are kept (None: all of them) and their
        clustering rows."""
        x = _doubles(frame, self.columns)
        kept = None
        ok = np.isfinite(x)
        if not ok.all():
            if self.drop_invalid:
                kept = ok.all(axis=1)
                x = x[kept]
            else:
                x = np.where(ok, x, np.asarray(self.fill)[None, :])
        return kept, (x - np.asarray(self.shift)) / np.asarray(self.scale)


def _doubles(frame: Any, columns: Sequence[str]) -> np.ndarray:
    """The (n, d) float64 matrix of ``columns`` of a Polars frame, cast as Spark casts them
    to double (NaN for null)."""
    import polars as pl

    return frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()


def pass_engine(engine: Engine | None, spark: SparkSession) -> Engine:
    """The engine that runs the passes over the input's files: the run's (the ``engine``
    config), or the default Spark engine where a caller built the run without one."""
    from pipelines.engine import Engine

    return engine if engine is not None else Engine("spark", spark)


def file_input(spark: SparkSession, settings: ClusterEvalSettings, run: Run, types: dict[str, str],
               features: list[str]) -> tuple[str, int | None] | None:
    """``(path, version)`` when the passes can read the input's files themselves, else None.

    That is a Delta table by path or Parquet files, with plain numeric features, where the
    engine's tasks read files (not a catalog table, not Spark's own Delta on Databricks).
    """
    from pipelines.engine import source

    path = settings.input
    if path is None or (settings.format or _infer_format(path)) not in ("delta", "parquet"):
        return None
    if any(types[c] not in _FILE_TYPES for c in features) or not pass_engine(run.engine, spark).reads_files(path):
        return None
    version = run.details.get("dataset", {}).get("version")
    try:
        names = set(source(path, version=version).schema.names)
    except UserError:  # e.g. deletion vectors, which only Spark's own Delta reads
        return None
    return (path, version) if set(features) <= names else None


@dataclass
class Prepared:
    """The clustering input, streamed from the source (nothing cached).

    ``frame`` has ``_row_id`` and the scaled features as double columns ``_f0..``
    (what the batched passes read); ``df`` has ``_row_id`` + a ``features`` vector (what
    MLlib reads; cached only by the MLlib algorithms).
    """

    frame: DataFrame
    df: DataFrame
    features: list[str]
    rows: int
    profile: Profile
    scaled: list[str]
    constant: list[str]
    shift: np.ndarray
    scale: np.ndarray
    row_id_given: bool
    counts: dict[str, Any] = field(default_factory=dict)
    files: FileInput | None = None  # the passes read the input's files (None: they read ``frame``)
    held: Held | None = None  # every row is on the driver (a small input; see prepare's collect_up_to)

    @property
    def low(self) -> np.ndarray:
        """Per-feature minimum in the clustering space (for the gap statistic's box)."""
        return (self.profile.minimum - self.shift) / self.scale

    @property
    def high(self) -> np.ndarray:
        return (self.profile.maximum - self.shift) / self.scale

    @property
    def sample_key(self) -> list[str]:
        """Columns the seeded samples hash: the row id when the input has one, else the values.

        Either way the sample does not depend on the partitioning (a positional id would).
        """
        return [ROW_ID] if self.row_id_given else feature_columns(len(self.features))

    def to_input_units(self, centers: np.ndarray) -> np.ndarray:
        return centers * self.scale + self.shift


def prepare(df: DataFrame, settings: ClusterEvalSettings, run: Run, *, source: str, collect_up_to: int = 0) -> Prepared:
    """Check features, handle bad values and scale: ``_row_id`` + scaled feature columns.

    ``collect_up_to``: an input with a ``_row_id`` and at most this many rows, known from
    :func:`known_rows` without reading it, is brought to the driver in one Spark job
    (:class:`Held`) and profiled there, bit for bit as :func:`profile` does in Spark;
    0 (the default) keeps every step in Spark.

    Raises
    ------
    UserError
        Non-numeric or missing feature column, empty input, or no valid rows left.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    types = dict(df.dtypes)
    row_id_given = ROW_ID in df.columns
    rows = None
    if collect_up_to and row_id_given and (known := known_rows(settings, run)) is not None and known <= collect_up_to:
        wanted = settings.features or default_columns((f.name, isinstance(f.dataType, NumericType))
                                                      for f in df.schema.fields)
        if wanted and len(set(wanted)) == len(wanted) and all(types.get(c) in _FILE_TYPES for c in wanted):
            rows = _read_one_file(df.sparkSession, settings, run, types, wanted)
            run.details["held_read"] = "file" if rows is not None else "spark"
            if rows is None:
                rows = _collect(df, wanted, settings.seed)
            run.progress(f"{rows.num_rows} rows (at most summary_rows={collect_up_to}): prepared on the driver")
    features = select_features(df, settings.features, source=source, run=run, rows=rows)
    if row_id_given:
        df = df.withColumn(ROW_ID, F.col(ROW_ID).cast("long"))
    else:
        run.warn(f"{source}: no {ROW_ID} column; assigning one by position (monotonically_increasing_id)")
        df = df.withColumn(ROW_ID, F.monotonically_increasing_id())
    df = df.select(ROW_ID, *[F.col(c).cast("double").alias(c) for c in features])

    held = None if rows is None else _held(rows, features)
    d = len(features)
    prof = profile(df, features) if held is None else _profile_of(_held_moments(held, d), d, features)
    if prof.rows == 0:
        raise UserError(f"{source}: input has no rows")
    counts: dict[str, Any] = {"rows_input": prof.rows, "rows_with_invalid_features": prof.invalid_rows}
    bad = {c: n for c, n in prof.bad_values.items() if n}
    fill = np.zeros(len(features))
    if prof.invalid_rows:
        detail = ", ".join(f"{c}: {n}" for c, n in bad.items())
        if settings.impute == "mean":
            df, prof, means = _impute_means(df, features, bad, held)
            fill = np.array([means.get(c, 0.0) for c in features])
            counts["rows_imputed"] = counts["rows_with_invalid_features"]
            counts["values_imputed"] = bad
            run.warn(f"{source}: imputed column means into {counts['rows_imputed']} rows with null/NaN/inf features ({detail})")
        else:
            from functools import reduce

            df = df.filter(~reduce(lambda a, b: a | b, [_bad(c) for c in features]))
            if held is not None:
                held = held.keep(np.isfinite(held.x).all(axis=1))
            counts["rows_excluded"] = prof.invalid_rows
            counts["values_invalid"] = bad
            run.warn(f"{source}: excluded {prof.invalid_rows} rows with null/NaN/inf features ({detail})")
    rows = prof.rows - (prof.invalid_rows if settings.impute == "drop" else 0)
    counts["rows_used"] = rows
    if rows == 0:
        raise UserError(f"{source}: no rows left after excluding {prof.invalid_rows} rows with null/NaN/inf features")

    constant = [c for c, s in zip(features, prof.std, strict=True) if not s > 0.0]
    for c in constant:
        run.warn(f"{source}: feature '{c}' is constant; left out of scaling (it adds nothing to distances)")
    shift, scale = np.zeros(len(features)), np.ones(len(features))
    scaled: list[str] = []
    if settings.scale == "standard":
        for i, c in enumerate(features):
            if c not in constant:
                shift[i], scale[i] = prof.mean[i], prof.std[i]
                scaled.append(c)
    names = feature_columns(len(features))
    cols = [((F.col(c) - float(shift[i])) / float(scale[i]) if c in scaled else F.col(c)).alias(names[i])
            for i, c in enumerate(features)]
    frame = df.select(ROW_ID, *cols)
    vectors = frame.select(ROW_ID, array_to_vector(F.array(*names)).alias(FEATURES))
    files = None
    if (where := file_input(df.sparkSession, settings, run, types, features)) is not None:
        files = FileInput(where[0], where[1], tuple(features), settings.impute == "drop", tuple(map(float, fill)),
                          tuple(map(float, shift)), tuple(map(float, scale)))
    return Prepared(frame, vectors, features, rows, prof, scaled, constant, shift, scale, row_id_given, counts, files,
                    held)


def _impute_means(df: DataFrame, features: list[str], bad: dict[str, int],
                  held: Held | None = None) -> tuple[DataFrame, Profile, dict[str, float]]:
    """Replace bad values by the mean of the column's finite values; re-profile the result.

    With ``held``, the means and the profile are computed from those rows (as Spark
    computes them), and the held rows are filled in place.

    Returns the filled frame, its profile and the mean imputed into each column of ``bad``."""
    from pyspark.sql import functions as F

    names = list(bad)
    d = len(names)
    if held is None:
        aggs = []
        for i, c in enumerate(names):
            finite = F.when(~_bad(c), F.col(c))
            aggs += [F.count(finite).alias(f"n{i}"), F.mean(finite).alias(f"mean{i}")]
        parts = _partition_moments(df, aggs)
        n, mean, _ = _merge_moments([(_vector(r, "n", d), _vector(r, "mean", d), np.zeros(d)) for r in parts], d)
    else:
        n, mean = _held_means(held, [features.index(c) for c in names])
    means = {}
    for i, c in enumerate(names):
        if not n[i] > 0:
            raise UserError(f"column '{c}': every value is null, NaN or infinite; nothing to impute from")
        means[c] = float(mean[i])
    filled = df.select(
        ROW_ID, *[F.when(_bad(c), F.lit(means[c])).otherwise(F.col(c)).alias(c) if c in bad else F.col(c) for c in features]
    )
    if held is None:
        return filled, profile(filled, features), means
    for c in names:
        j = features.index(c)
        held.x[:, j] = np.where(np.isfinite(held.x[:, j]), held.x[:, j], means[c])
    return filled, _profile_of(_held_moments(held, len(features)), len(features), features), means


@dataclass
class Held:
    """Every row of a small input on the driver (at most the ``collect_up_to`` of
    :func:`prepare`): Spark partition, row id, raw features (NaN for null) and the sample
    hash of :func:`bounded_sample`, in Spark's partition and row order.

    The prepare steps then run on these rows with numpy, computing exactly what Spark's
    aggregates compute (the same sequential sums and moment updates per partition, merged
    in partition order), so the results are bit-identical to the Spark path's.
    """

    part: np.ndarray
    ids: np.ndarray
    x: np.ndarray
    u: np.ndarray

    def keep(self, rows: np.ndarray) -> Held:
        return Held(self.part[rows], self.ids[rows], self.x[rows], self.u[rows])


def known_rows(settings: ClusterEvalSettings, run: Run) -> int | None:
    """The input's row count without reading it (built-in dataset, a Delta table's log), else None."""
    if settings.input is None:
        return DEFAULT_ROWS
    dataset = run.details.get("dataset", {})
    if dataset.get("format") != "delta" or dataset.get("version") is None:
        return None
    return delta.table_rows(settings.input, dataset["version"])


def _collect(df: DataFrame, columns: list[str], seed: int) -> Any:
    """One Spark job: every row of the input ``df`` (``_row_id`` and ``columns`` as they
    are) to the driver, as an Arrow table in Spark's partition and row order, with the
    sample hash of :func:`bounded_sample`."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    row_id = F.col(ROW_ID).cast("long")
    # the position encodes (partition, row index): the order profile()'s partials see
    t = df.select(F.monotonically_increasing_id().alias("_pos"), hash_uniform(F.lit(seed), row_id, F.lit(-7))
                  .alias("_u"), row_id.alias(ROW_ID), *columns).toArrow()
    return t.take(pc.sort_indices(t, sort_keys=[("_pos", "ascending")]))


def _read_one_file(spark: SparkSession, settings: ClusterEvalSettings, run: Run, types: dict[str, str],
                   columns: list[str]) -> Any | None:
    """:func:`_collect`'s table without a Spark job, for a table of a single data file that
    Spark reads as one partition (None otherwise).

    A file no larger than both ``spark.sql.files.maxPartitionBytes`` and
    ``spark.sql.files.openCostInBytes`` is one split whatever the parallelism, so Spark's
    scan is partition 0 with the file's rows in order: the file is read here (by the
    engine's reader, which names a file it cannot read) and the sample hash computed as
    Spark computes it (:func:`hash_uniform_ids`).
    """
    import pyarrow as pa

    from pipelines import engine

    where = file_input(spark, settings, run, types, columns)
    if where is None or settings.format not in (None, "delta") or not delta.table_exists(where[0]):
        return None
    src = engine.source(where[0], version=where[1], split_bytes=1 << 62)
    limit = min(_conf_bytes(spark, "spark.sql.files.maxPartitionBytes", 128 << 20),
                _conf_bytes(spark, "spark.sql.files.openCostInBytes", 4 << 20))
    actions = pa.table(delta._open(where[0], where[1]).get_add_actions(flatten=True))
    if len(src.units) != 1 or actions.num_rows != 1 or actions.column("size_bytes")[0].as_py() > limit:
        return None
    frames = [f.to_arrow() for f in engine._read_unit(src.units[0], src.schema, [ROW_ID, *columns],
                                                      engine.DEFAULT_BATCH_ROWS)]
    if not frames:
        return None
    table = pa.concat_tables(frames)
    ids = table.column(ROW_ID).cast(pa.int64())
    if ids.null_count:
        return None  # Spark's hash skips a null; left to Spark
    ids_np = ids.to_numpy()
    return pa.table({"_pos": pa.array(np.arange(table.num_rows, dtype=np.int64)),
                     "_u": hash_uniform_ids(settings.seed, ids_np, -7), ROW_ID: ids,
                     **{c: table.column(c) for c in columns}})


def _conf_bytes(spark: SparkSession, key: str, default: int) -> int:
    """A byte-size SQL conf (``134217728``, ``128MB``, ``4m``) in bytes."""
    text = str(spark.conf.get(key, str(default))).strip().lower().removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def _held(rows: Any, features: list[str]) -> Held:
    """The :class:`Held` rows of a :func:`_collect` table: features cast to double as Spark casts them."""
    import polars as pl

    x = _doubles(pl.from_arrow(rows.select(features)), features) if features else np.empty((rows.num_rows, 0))
    return Held(rows.column("_pos").to_numpy() >> 33, rows.column(ROW_ID).to_numpy().astype(np.int64),
                np.ascontiguousarray(x, dtype=np.float64), rows.column("_u").to_numpy())


def _sequential_sum(x: np.ndarray) -> np.ndarray:
    """Per column, the left-to-right sum Spark's ``sum`` / ``avg`` accumulate from 0.0."""
    return np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)[-1]


def _held_moments(held: Held, d: int) -> list[dict[str, Any]]:
    """:func:`profile`'s aggregate row per partition, computed as Spark computes it: ``avg``
    is the sequential sum over the count, ``var_pop`` the ``CentralMomentAgg`` update per row."""
    bad = ~np.isfinite(held.x)
    any_bad = bad.any(axis=1)
    parts = []
    for p in np.unique(held.part):
        rows = held.part == p
        good = held.x[rows & ~any_bad]
        n = good.shape[0]
        row: dict[str, Any] = {"_part": int(p), "rows": int(rows.sum()), "invalid": int(any_bad[rows].sum())}
        count, avg, m2 = 0.0, np.zeros(d), np.zeros(d)
        for value in good:
            count += 1.0
            delta = value - avg
            delta_n = delta / count
            avg = avg + delta_n
            m2 = m2 + delta * (delta - delta_n)
        mean = _sequential_sum(good) / n if n else None
        for i in range(d):
            row.update({f"bad{i}": int(bad[rows, i].sum()), f"n{i}": n,
                        f"mean{i}": None if mean is None else float(mean[i]),
                        f"var{i}": float(m2[i] / count) if n else None,
                        f"min{i}": float(good[:, i].min()) if n else None,
                        f"max{i}": float(good[:, i].max()) if n else None})
        parts.append(row)
    return parts


def _held_means(held: Held, columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_impute_means`' means of the finite values of ``columns``, as Spark computes them."""
    d = len(columns)
    parts = []
    for p in np.unique(held.part):
        x = held.x[held.part == p][:, columns]
        ok = np.isfinite(x)
        n = ok.sum(axis=0).astype(np.float64)
        sums = _sequential_sum(np.where(ok, x, 0.0))  # adding 0.0 for a skipped value changes no sum
        parts.append((n, np.divide(sums, n, out=np.zeros(d), where=n > 0), np.zeros(d)))
    return _merge_moments(parts, d)[:2]


def held_sample(prep: Prepared, *, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bounded_sample` of ``prep.frame`` from the held rows (same rows, same order)."""
    held = prep.held
    assert held is not None
    order = np.lexsort((held.ids, held.u))[:n_max]
    # an unscaled column has shift 0 and scale 1: (x - 0) / 1 is x, bit for bit, as FileInput has it
    return held.ids[order], (held.x[order] - prep.shift) / prep.scale


def bounded_sample(
    frame: DataFrame, *, n_max: int, rows: int, seed: int, key: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of at most ``n_max`` rows of a prepared ``frame``, on the driver.

    Rows are ranked by a hash of (seed, ``key`` columns), so the sample does not depend
    on the partitioning. A hash filter keeps slightly more than ``n_max`` rows in Spark;
    only those reach the driver (as Arrow), and the ``n_max`` lowest-ranked are kept,
    in rank order.

    Returns
    -------
    row_ids : ndarray of shape (m,)
    x : ndarray of shape (m, d)
    """
    from pyspark.sql import functions as F

    names = [c for c in frame.columns if c != ROW_ID]
    if n_max <= 0:
        return np.empty(0, dtype=np.int64), np.empty((0, len(names)))
    u = hash_uniform(F.lit(seed), *[F.col(c) for c in key], F.lit(-7))
    fraction = min(1.0, (n_max + 6.0 * math.sqrt(n_max) + 100.0) / max(rows, 1))
    picked = frame.select(u.alias("_u"), ROW_ID, *names).filter(F.col("_u") <= fraction).toArrow()
    # (hash, row id): a total order, so equal hashes cannot make the sample vary
    order = np.lexsort((picked.column(ROW_ID).to_numpy(), picked.column("_u").to_numpy()))[:n_max]
    x = np.column_stack([picked.column(c).to_numpy() for c in names]) if names else np.empty((picked.num_rows, 0))
    return picked.column(ROW_ID).to_numpy()[order].astype(np.int64), x[order].astype(np.float64)


def distinct_points(frame: DataFrame, *, limit: int) -> int:
    """Distinct feature vectors of a prepared ``frame``, counted up to ``limit``."""
    return frame.select(*[c for c in frame.columns if c != ROW_ID]).distinct().limit(limit).count()


def hash_sample(df: DataFrame, *, n_max: int, rows: int, seed: int, key: list[str]) -> DataFrame:
    """A seeded Spark-side sample of about ``n_max`` rows (a hash filter on the ``key`` columns)."""
    from pyspark.sql import functions as F

    if n_max >= rows:
        return df
    return df.filter(hash_uniform(F.lit(seed), *[F.col(c) for c in key], F.lit(-11)) <= n_max / rows)
