"""The fitted per-column model, as plain data.

This is the contract between ``gmm_fit`` (which writes it) and ``gmm_transform`` (which
reads it). A fit is stored in ``<fit_dir>/models``, a Delta table partitioned by
``column`` with one row per mode (:data:`MODEL_SCHEMA`); it is never pickled.

Modes of a column, by ``kind``:

- ``gaussian``: a mixture component (``weight``, ``mean``, ``std``); continuous and mixed columns.
- ``special``: a listed modal value of a mixed column (``value_double``), e.g. 0 or -1.
- ``category``: a category of a categorical column (``value`` as a string; a null
  ``value`` with ``is_null=True`` is the null category).

``rank`` is the frequency rank among the column's *kept* modes, 0 = most frequent,
unified across kinds (a mixed column ranks its special values and its Gaussians
together, as CTAB-GAN does). Dropped Gaussians have ``kept=False`` and a null rank.
Transforms output ``rank``; the inverse maps a rank back through this table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

ColumnType = Literal["continuous", "categorical", "mixed"]
ModeKind = Literal["gaussian", "special", "category"]

MODEL_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string(), nullable=False),
        pa.field("column_type", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("component", pa.int32(), nullable=False),  # index in fit order
        pa.field("rank", pa.int32()),  # frequency rank among kept modes; null if dropped
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("weight", pa.float64()),  # share of the column's non-null rows
        pa.field("mean", pa.float64()),
        pa.field("std", pa.float64()),
        pa.field("value", pa.string()),  # category (categorical)
        pa.field("value_double", pa.float64()),  # modal value (mixed, kind=special)
        pa.field("is_null", pa.bool_(), nullable=False),  # the null category
        pa.field("frequency", pa.float64()),  # share of rows that select this mode
        pa.field("drop_cost", pa.float64()),  # nats/row the column loses without this Gaussian (pruning)
        pa.field("reason", pa.string()),  # why it was dropped, or kept despite a small weight
        # settings used for the fit, repeated on every row of the column
        pa.field("max_components", pa.int32()),
        pa.field("weight_threshold", pa.float64()),
        pa.field("prune_tolerance", pa.float64()),
        pa.field("mode", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("n_rows", pa.int64()),  # rows seen (including nulls)
        pa.field("n_null", pa.int64()),  # null / NaN / inf rows of a continuous or mixed column
        pa.field("source_type", pa.string()),  # the input column's type (Spark SQL name); the inverse restores it
        pa.field("fit_id", pa.string()),
    ]
)

# Floor for a mode's standard deviation, relative to the column's scale: a constant
# column (or a mode made of one repeated value) gets std = max(STD_FLOOR_ABS,
# STD_FLOOR_REL * |mean|) instead of 0, so (x - mean) / (4 std) stays finite.
STD_FLOOR_ABS = 1e-6
STD_FLOOR_REL = 1e-9
STD_MULTIPLIER = 4.0  # RDT's ClusterBasedNormalizer.STD_MULTIPLIER: z = (x - mu) / (4 sigma)
CLIP = 0.99  # forward clip of z: a Gaussian represents x when |x - mu| / (4 sigma) <= CLIP


def std_floor(mean: float) -> float:
    return max(STD_FLOOR_ABS, STD_FLOOR_REL * abs(mean))


@dataclass(frozen=True)
class Mode:
    kind: ModeKind
    component: int
    rank: int | None
    kept: bool
    weight: float | None = None
    mean: float | None = None
    std: float | None = None
    value: str | None = None
    value_double: float | None = None
    is_null: bool = False
    frequency: float | None = None
    drop_cost: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ColumnModel:
    """One column's fitted modes plus the settings of its fit."""

    column: str
    column_type: ColumnType
    modes: tuple[Mode, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> tuple[Mode, ...]:
        """Kept modes in rank order (rank 0 first)."""
        return tuple(sorted((m for m in self.modes if m.kept), key=lambda m: m.rank))

    @property
    def n_modes(self) -> int:
        return len(self.kept)

    def to_rows(self) -> list[dict[str, Any]]:
        s = self.settings
        return [
            {
                "column": self.column,
                "column_type": self.column_type,
                "kind": m.kind,
                "component": m.component,
                "rank": m.rank,
                "kept": m.kept,
                "weight": m.weight,
                "mean": m.mean,
                "std": m.std,
                "value": m.value,
                "value_double": m.value_double,
                "is_null": m.is_null,
                "frequency": m.frequency,
                "drop_cost": m.drop_cost,
                "reason": m.reason,
                "max_components": s.get("max_components"),
                "weight_threshold": s.get("weight_threshold"),
                "prune_tolerance": s.get("prune_tolerance"),
                "mode": s.get("mode"),
                "backend": s.get("backend"),
                "seed": s.get("seed"),
                "n_rows": s.get("n_rows"),
                "n_null": s.get("n_null"),
                "source_type": s.get("source_type"),
                "fit_id": s.get("fit_id"),
            }
            for m in self.modes
        ]

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist(self.to_rows(), schema=MODEL_SCHEMA)


_SETTINGS = ("max_components", "weight_threshold", "prune_tolerance", "mode", "backend", "seed", "n_rows", "n_null",
             "source_type", "fit_id")
_MODE_FIELDS = ("kind", "component", "rank", "kept", "weight", "mean", "std", "value", "value_double", "is_null", "frequency",
                "drop_cost", "reason")


def models_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, ColumnModel]:
    """Rebuild :class:`ColumnModel` objects from rows of the ``models`` table (e.g. ``pa.Table.to_pylist()``)."""
    by_column: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_column.setdefault(row["column"], []).append(row)
    out = {}
    for column, col_rows in by_column.items():
        col_rows.sort(key=lambda r: r["component"])
        first = col_rows[0]
        # .get: fits written before a field existed (drop_cost, reason, source_type) read as null
        modes = tuple(Mode(**{k: r.get(k) for k in _MODE_FIELDS}) for r in col_rows)
        out[column] = ColumnModel(
            column=column,
            column_type=first["column_type"],
            modes=modes,
            settings={k: first.get(k) for k in _SETTINGS},
        )
    return out
