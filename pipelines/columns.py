"""Column names and rules every stage shares (no Spark, no I/O; kernels may import it).

- :data:`ROW_ID`: the row key ingest assigns once (BIGINT, unique, never changed);
- :func:`quote`: a column name as a Spark SQL identifier;
- :func:`default_columns`: the data columns a stage works on when none are named.
"""

from __future__ import annotations

from collections.abc import Iterable

ROW_ID = "_row_id"


def quote(name: str) -> str:
    """``name`` as a Spark SQL identifier: in backticks, a backtick doubled."""
    return "`" + name.replace("`", "``") + "`"


def default_columns(columns: Iterable[tuple[str, bool]]) -> list[str]:
    """The numeric columns not starting with ``_`` (row id and ingest metadata), in order.

    Parameters
    ----------
    columns : iterable of (name, is_numeric)
        Each caller judges numeric types in its own type system (Spark or Arrow).
    """
    return [name for name, numeric in columns if numeric and not name.startswith("_")]
