"""Safe, unique column names (pure Python, no Spark).

Source headers arrive with spaces, dots, unicode, duplicates, empty names and path-like
names (``../x``, ``a/b``). Bronze columns are lower-case ``[a-z0-9_]`` identifiers, so a
name can never be a path component that leaves the output root, needs SQL quoting, or
clashes with another column under Spark's case-insensitive resolution.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from pipelines.columns import ROW_ID

# Bronze metadata columns; a sanitised source name never starts with "_", so it cannot clash.
SOURCE_FILE = "_source_file"
INGESTED_AT = "_ingested_at"
METADATA_COLUMNS = (ROW_ID, SOURCE_FILE, INGESTED_AT)

MAX_NAME_LENGTH = 100
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def safe_name(name: str | None, *, position: int) -> str:
    """One name made safe, before de-duplication.

    Parameters
    ----------
    name : str or None
        The original column name.
    position : int
        0-based position of the column; names ``col_<position+1>`` when nothing usable is left.

    Returns
    -------
    str
        Lower-case ASCII letters, digits and single underscores; never empty, never
        starting with ``_`` or a digit.
    """
    # NFKD splits accents off their letters ("é" -> "e" + combining mark) so they survive as ASCII.
    ascii_text = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode("ascii")
    text = _NOT_WORD.sub("_", ascii_text.lower()).strip("_")
    if not text:
        return f"col_{position + 1}"
    if text[0].isdigit():
        text = f"c_{text}"
    return text[:MAX_NAME_LENGTH].rstrip("_")


def safe_names(names: Sequence[str | None]) -> list[str]:
    """Make every name safe and unique, keeping their order.

    Parameters
    ----------
    names : sequence of str or None
        The original names, in column order (duplicates and empty names allowed).

    Returns
    -------
    list of str
        Safe names; a repeat of an earlier safe name gets ``_2``, ``_3``, ... (the first
        suffix not already taken), so ``["a", "A", "a_2"]`` -> ``["a", "a_3", "a_2"]``.

    Examples
    --------
    >>> safe_names(["Amount (€)", "amount", "../x", "a/b", "", "名前", "2nd"])
    ['amount', 'amount_2', 'x', 'a_b', 'col_5', 'col_6', 'c_2nd']
    """
    bases = [safe_name(name, position=i) for i, name in enumerate(names)]
    # Reserve every base first so a suffixed name never takes a name that appears later as-is.
    taken = set(bases)
    result: list[str] = []
    seen: set[str] = set()
    for base in bases:
        if base not in seen:
            seen.add(base)
            result.append(base)
            continue
        k = 2
        while f"{base}_{k}" in taken:
            k += 1
        name = f"{base}_{k}"
        taken.add(name)
        seen.add(name)
        result.append(name)
    return result
