"""Ingest: raw CSV / JSON lines / Parquet / Delta files -> bronze Delta table + quarantine.

See :mod:`pipelines.ingest.stage` for the flow and the row-id scheme,
:mod:`pipelines.ingest.schema` for types and value checks, and
:mod:`pipelines.ingest.names` for safe column names.
"""

from pipelines.ingest.names import safe_names
from pipelines.ingest.stage import run

__all__ = ["run", "safe_names"]
