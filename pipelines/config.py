"""Typed, validated configuration.

Layers, later ones winning key by key:

1. ``conf/base.yaml``: defaults for every job;
2. ``conf/local.yaml`` or, on Databricks (``DATABRICKS_RUNTIME_VERSION`` is set),
   ``conf/databricks.yaml``;
3. the user's ``--config FILE``;
4. command-line flags.

Every section is a pydantic model with ``extra="forbid"`` and strict types, so an
unknown key or a wrong type is a :class:`~pipelines.errors.UserError` whose one-line
message names the key and the file that set it. YAML is read with ``yaml.safe_load``
only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import UserError

CONF_DIR = Path(__file__).resolve().parent / "conf"
# What people's exports write for "no value" (ingest.null_values). NaN and inf are not
# here: they are floating-point values.
DEFAULT_NULL_VALUES = ("", "NA", "N/A", "null", "NULL", "None", "#N/A")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SparkSettings(_Section):
    master: str = "local[*]"
    app_name: str = "pipelines"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)


class DeltaSettings(_Section):
    # auto: Spark's native Delta when its classes are on the classpath, else delta-rs.
    backend: Literal["auto", "native", "delta-rs"] = "auto"
    target_file_mb: int = Field(128, ge=1)


class EngineSettings(_Section):
    """Who runs the per-file tasks (:mod:`pipelines.engine`); one setting for every stage."""

    name: Literal["spark", "local", "polars"] = "spark"  # polars: an alias of local
    # auto: tasks write the files and the driver commits (delta-rs), or mapInArrow and
    # Spark's writer where Spark's native Delta must write; files / mapInArrow force one.
    spark_path: Literal["auto", "files", "mapInArrow"] = "auto"
    workers: int | None = Field(None, ge=1)  # local threads (default: the machine's cores)
    batch_rows: int = Field(131_072, ge=1)  # rows per batch within a task


class IngestSettings(_Section):
    source: str | None = None
    format: Literal["csv", "parquet", "json", "delta"] | None = None
    output: str = "output/ingest"
    schema_file: str | None = None
    name: str | None = None
    mode: Literal["overwrite", "append"] = "overwrite"
    force: bool = False
    target_file_mb: int = Field(128, ge=1)
    infer_sample_rows: int = Field(10000, ge=1)
    delimiter: str | None = None
    header: bool = True
    encoding: str = "UTF-8"
    # CSV quoted fields may hold newlines; True parses them correctly but reads each file in
    # one task. False splits big files across tasks (records must then be one line each).
    multiline: bool = True
    # Text that means null in CSV / JSON sources (compared after trimming spaces); [""]: empty only.
    null_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NULL_VALUES))
    dry_run: bool = False  # print the inferred schema, name mapping and null tokens; write nothing


class ClusterEvalSettings(_Section):
    input: str | None = None
    format: Literal["delta", "parquet", "csv"] | None = None
    features: list[str] | None = None
    k_min: int = Field(2, ge=2)
    k_max: int = Field(10, ge=2)
    k: list[int] | None = None
    scale: Literal["standard", "none"] = "standard"
    algorithm: Literal["kmeans", "spark-kmeans", "bisecting"] = "kmeans"
    max_iter: int = Field(20, ge=1)  # kmeans: full-data Lloyd passes; MLlib: maxIter
    tol: float = Field(1e-4, ge=0.0)  # kmeans: a k stops when a pass lowers its inertia by at most this (relative)
    summary_rows: int = Field(50_000, ge=100)  # kmeans: seeded sample the driver fits every k on
    n_init: int = Field(20, ge=1)  # kmeans: k-means++ restarts per k on the summary (cheap: 50k rows)
    seed: int = 42
    silhouette_sample: int = Field(5000, ge=0)
    gmm: bool = False
    gap: int = Field(0, ge=0)
    gap_sample: int = Field(1_000_000, ge=1)
    keep_assignments: bool = False
    impute: Literal["drop", "mean"] = "drop"
    output: str = "output/cluster_eval"


class GmmFitSettings(_Section):
    input: str | None = None
    columns: list[str] | None = None
    categorical: list[str] = Field(default_factory=list)
    mixed: dict[str, list[float]] = Field(default_factory=dict)
    fit_dir: str = "output/gmm_fit"
    max_components: int = Field(10, ge=1)
    weight_threshold: float = Field(0.005, ge=0.0, lt=1.0)
    # a Gaussian under weight_threshold is dropped only if that costs < this many nats/row (inf: weight only)
    prune_tolerance: float = Field(1e-3, ge=0.0)
    selection: Literal["bic", "none"] = "bic"  # also drop Gaussians whose 3 parameters BIC does not pay for
    # share of a column's finite rows that may be left to values no kept Gaussian represents (1: add none)
    coverage_tolerance: float = Field(1e-5, ge=0.0, le=1.0)
    coverage_min_rows: int = Field(5, ge=1)  # fewest rows an added Gaussian may cover
    mode: Literal["mle", "bayesian"] = "mle"
    backend: Literal["summary", "spark-ml"] = "summary"
    seed: int = 42
    only: list[str] | None = None
    only_drifted: str | None = None  # a drift output folder: refit exactly the columns its last run marked drifted
    bins: int = Field(4096, ge=16)  # most summary points per column (EM runs on these)
    max_iter: int | None = Field(None, ge=1)  # None: 5000 for mle, 2000 for bayesian
    n_init: int = Field(3, ge=1)  # EM starts on the summary (k-means++, random, sampled); the best wins
    refine_iterations: int = Field(0, ge=0)  # full-data EM passes after the summary fit
    # an input of at most this many rows (its Delta log's count) is summarised on the driver,
    # its files read with pyarrow: the same summaries as the Spark pass, no Spark job (0: always Spark)
    driver_rows: int = Field(100_000, ge=0)


class GmmTransformSettings(_Section):
    fit_dir: str = "output/gmm_fit"
    input: str | None = None
    output: str = "output/gmm_transform"
    layout: Literal["long", "wide", "onehot"] = "wide"
    seed: int = 42
    sampling: Literal["tail-safe", "rdt"] = "tail-safe"  # rdt: RDT's ClusterBasedNormalizer exactly
    inverse: bool = False


class TokenizeSettings(_Section):
    input: str | None = None
    columns: list[str] | None = None
    output: str = "output/tokenize"
    bins: int = Field(256, ge=2)
    method: Literal["quantile", "uniform"] = "quantile"
    relative_error: float = Field(1e-4, ge=1e-9, lt=1.0)  # percentile_approx accuracy = ceil(1 / relative_error)
    detokenize: bool = False
    tokenizer: str | None = None
    value: Literal["mean", "centre"] = "mean"


class DriftSettings(_Section):
    current: str | None = None  # TABLE[@VERSION]
    baseline: str | None = None  # TABLE[@VERSION]; or baseline_fit
    baseline_fit: str | None = None  # a gmm_fit folder: each column against the version it was fitted on
    fit_dir: str | None = None  # models for the log-likelihood drift with --baseline (baseline_fit implies it)
    columns: list[str] | None = None
    categorical: list[str] = Field(default_factory=list)  # numeric columns compared as categories
    bins: int = Field(10, ge=2)
    psi_threshold: float = Field(0.2, gt=0.0)
    loglik_threshold: float = Field(0.25, gt=0.0)  # nats per row
    relative_error: float = Field(1e-4, ge=1e-9, lt=1.0)  # unused: drift's PSI edges are exact quantiles; kept for old configs
    output: str = "output/drift"


class TablesSettings(_Section):
    """Where Delta outputs live: a path under each stage's output root (no catalog), or the
    named table ``<catalog>.<schema>.<stage>_<table>`` on native Delta (Unity Catalog on
    Databricks, the session's own catalog locally); files stay under the output roots."""

    catalog: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # "schema" in YAML; the attribute name must not shadow pydantic's BaseModel.schema.
    schema_name: str | None = Field(None, alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class MlflowSettings(_Section):
    # auto: track on Databricks or when MLFLOW_TRACKING_URI is set; always: also locally
    # (tracking_uri, default a file store <output>/mlruns); never: off. Needs the mlflow extra.
    track: Literal["auto", "always", "never"] = "auto"
    tracking_uri: str | None = None
    experiment: str | None = None  # default: /Shared/pipelines on Databricks, "pipelines" elsewhere


class PipelineSettings(_Section):
    source: str | None = None
    format: Literal["csv", "parquet", "json", "delta"] | None = None
    output: str = "output/pipeline"


class Config(_Section):
    spark: SparkSettings = Field(default_factory=SparkSettings)
    delta: DeltaSettings = Field(default_factory=DeltaSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    cluster_eval: ClusterEvalSettings = Field(default_factory=ClusterEvalSettings)
    gmm_fit: GmmFitSettings = Field(default_factory=GmmFitSettings)
    gmm_transform: GmmTransformSettings = Field(default_factory=GmmTransformSettings)
    tokenize: TokenizeSettings = Field(default_factory=TokenizeSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    tables: TablesSettings = Field(default_factory=TablesSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)


def default_overlay() -> Path:
    """The environment overlay: ``databricks.yaml`` on a Databricks runtime, else ``local.yaml``."""
    name = "databricks.yaml" if os.environ.get("DATABRICKS_RUNTIME_VERSION") else "local.yaml"
    return CONF_DIR / name


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    overlay: str | os.PathLike[str] | None = None,
) -> Config:
    """Load and validate the layered configuration.

    Parameters
    ----------
    path : str or path-like, optional
        The user's config file (``--config``), applied over the packaged defaults.
    overrides : mapping of section -> {key: value}, optional
        Values from command-line flags; ``None`` values are ignored, so an absent flag
        never hides a config value.
    overlay : str or path-like, optional
        The environment overlay; defaults to :func:`default_overlay`.

    Returns
    -------
    Config

    Raises
    ------
    UserError
        A file is missing or does not parse, or a key is unknown or has the wrong type.
        The message names the key and the file that set it.
    """
    layers: list[tuple[str, dict[str, Any]]] = [
        (str(CONF_DIR / "base.yaml"), _read_yaml(CONF_DIR / "base.yaml")),
        (str(overlay or default_overlay()), _read_yaml(Path(overlay or default_overlay()))),
    ]
    if path is not None:
        layers.append((str(path), _read_yaml(Path(path))))
    if overrides:
        cleaned = {
            section: {k: v for k, v in values.items() if v is not None}
            for section, values in overrides.items()
        }
        layers.append(("command line", {s: v for s, v in cleaned.items() if v}))

    merged: dict[str, Any] = {}
    for _, data in layers:
        _deep_merge(merged, data)
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        source = _source_of(loc, layers)
        if err["type"] == "extra_forbidden":
            raise UserError(f"{source}: unknown config key '{key}'") from None
        raise UserError(f"{source}: config key '{key}': {err['msg']} (got {err.get('input')!r})") from None
    if (cfg.tables.catalog is None) != (cfg.tables.schema_name is None):
        raise UserError("config keys 'tables.catalog' and 'tables.schema' must be set together (or neither)")
    if cfg.cluster_eval.k_max < cfg.cluster_eval.k_min:
        raise UserError(
            f"config key 'cluster_eval.k_max' ({cfg.cluster_eval.k_max}) must be >= "
            f"'cluster_eval.k_min' ({cfg.cluster_eval.k_min})"
        )
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: config file is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: config file must be a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict) and key != "mixed":
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _source_of(loc: tuple[str, ...], layers: list[tuple[str, dict[str, Any]]]) -> str:
    """The last layer that set the key at ``loc`` (or its nearest parent)."""
    for depth in range(len(loc), 0, -1):
        for name, data in reversed(layers):
            node: Any = data
            for part in loc[:depth]:
                if not isinstance(node, Mapping) or part not in node:
                    break
                node = node[part]
            else:
                return name
    return layers[-1][0]
