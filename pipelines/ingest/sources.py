"""Source files: listing, format checks, CSV headers, and the raw (untyped) Spark readers.

Only metadata and the first few kilobytes of each file are read on the driver (to list,
to check the format and to read CSV headers). Rows are read by Spark.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import fs
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

CORRUPT = "_corrupt_record"
HEAD_BYTES = 64 * 1024
_GLOB_CHARS = "*?["
_DELIMITERS = (",", ";", "\t", "|")
# Hadoop picks a decompression codec by extension; such files hold more rows than bytes.
COMPRESSED_RE = r"(?i)\.(gz|bz2|deflate|lz4|snappy|zst|xz)$"
# Paths Hadoop puts in a URI unchanged, so Spark's file_path is predictable without decoding it.
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9/._=+-]+$")


@dataclass(frozen=True)
class SourceFile:
    """One input file: where it is, and the identity recorded by append mode."""

    path: str
    size: int
    mtime_ms: int

    @property
    def spark_path(self) -> str | None:
        """Spark's ``_metadata.file_path`` for this file when it is certain (no character to escape)."""
        if fs.is_remote(self.path):
            return self.path if _PLAIN_PATH.match(self.path.split("://", 1)[1]) else None
        return f"file:{self.key}" if _PLAIN_PATH.match(self.key) else None

    @property
    def key(self) -> str:
        """The file's path as :func:`file_key` computes it from Spark's ``_metadata.file_path``."""
        return os.path.abspath(self.path) if not fs.is_remote(self.path) else self.path


def file_key(file_path: Column) -> Column:
    """Spark's ``_metadata.file_path`` (a URL-encoded URI) -> :attr:`SourceFile.key`."""
    local = F.regexp_replace(file_path, r"^file:(//)?", "")
    # url_decode turns "+" into a space; Hadoop never encodes "+", so protect it first.
    return F.url_decode(F.replace(local, F.lit("+"), F.lit("%2B")))


def _is_hidden(name: str) -> bool:
    # Spark's own rule: _SUCCESS, _delta_log, .crc files and the like are not data.
    return name.startswith(("_", "."))


def list_files(source: str) -> list[SourceFile]:
    """List the data files of a file, folder or glob, sorted by path.

    Raises
    ------
    UserError
        The path does not exist, the glob matches nothing, the folder has no data files,
        or a file cannot be read.
    """
    if fs.is_remote(source):
        return _list_remote(source)
    path = fs.local_path(source)
    if any(ch in path for ch in _GLOB_CHARS):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise UserError(f"{source}: glob matched no files")
    elif not os.path.lexists(path):
        raise UserError(f"{source}: path does not exist")
    else:
        matches = [path]
    found: list[str] = []
    for match in matches:
        if os.path.isdir(match):
            for root, dirs, names in os.walk(match):
                dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
                found.extend(os.path.join(root, n) for n in sorted(names) if not _is_hidden(n))
        elif not _is_hidden(os.path.basename(match)):
            found.append(match)
    if not found:
        raise UserError(f"{source}: no data files found (hidden files starting with '_' or '.' are skipped)")
    return sorted((_stat_local(p) for p in found), key=lambda f: f.path)


def _stat_local(path: str) -> SourceFile:
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read file ({exc.strerror})") from None
    return SourceFile(os.path.abspath(path), st.st_size, st.st_mtime_ns // 1_000_000)


def _list_remote(source: str) -> list[SourceFile]:
    import pyarrow.fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(source)
    scheme = source.split("://", 1)[0]
    globbed = any(ch in inner for ch in _GLOB_CHARS)
    base = inner.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0] if globbed else inner
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{source}: path does not exist")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    files = []
    for item in infos:
        rel = item.path[len(base):].strip("/").split("/") if item.path != base else [item.base_name]
        if item.type != pafs.FileType.File or any(_is_hidden(p) for p in rel):
            continue
        if globbed and not _glob_match(item.path, inner):
            continue
        files.append(SourceFile(f"{scheme}://{item.path}", item.size, (item.mtime_ns or 0) // 1_000_000))
    if not files:
        raise UserError(f"{source}: {'glob matched no files' if globbed else 'no data files found'}")
    return sorted(files, key=lambda f: f.path)


def _glob_match(path: str, pattern: str) -> bool:
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats, strict=True))


def read_head(path: str, size: int = HEAD_BYTES, *, tail: bool = False) -> bytes:
    """The first (or last) ``size`` bytes of a file."""
    try:
        if fs.is_remote(path):
            import pyarrow.fs as pafs

            filesystem, inner = pafs.FileSystem.from_uri(path)
            with filesystem.open_input_file(inner) as handle:
                length = handle.size()
                start = max(0, length - size) if tail else 0
                return handle.read_at(min(size, length), start)
        with open(fs.local_path(path), "rb") as handle:
            if tail:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
            return handle.read(size)
    except OSError as exc:
        raise UserError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def check_format(files: list[SourceFile], fmt: str) -> None:
    """Refuse files that are plainly not in ``fmt`` (a Parquet file given as CSV, and so on)."""
    for f in files:
        if f.size == 0:
            if fmt == "parquet":
                raise UserError(f"{f.path}: empty file is not a Parquet file (--format parquet)")
            continue
        head = read_head(f.path, 4)
        if fmt == "parquet":
            if head != b"PAR1" or read_head(f.path, 4, tail=True) != b"PAR1":
                raise UserError(f"{f.path}: not a Parquet file (--format parquet)")
        elif head == b"PAR1":
            raise UserError(f"{f.path}: is a Parquet file, not {fmt} (--format {fmt})")
        elif fmt == "json" and not _looks_like_json(f):
            raise UserError(f"{f.path}: not JSON lines: the first record does not start with '{{' (--format json)")


def _looks_like_json(f: SourceFile) -> bool:
    if f.path.endswith(tuple(ext for ext in (".gz", ".bz2", ".zst", ".lz4", ".snappy", ".deflate", ".xz"))):
        return True  # compressed: Spark decompresses; the bytes here say nothing
    text = read_head(f.path, 4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return not text or text[0] in "{["


def sniff_delimiter(first_line: str) -> str:
    """The most frequent of ``, ; TAB |`` in the header line (``,`` when none occurs)."""
    counts = {d: first_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def csv_header(f: SourceFile, *, delimiter: str | None, encoding: str) -> tuple[list[str], str]:
    """The first record of a CSV file (BOM removed) and the delimiter used to split it."""
    text = read_head(f.path).decode(encoding, errors="replace").lstrip("\ufeff")
    if delimiter is None:
        delimiter = sniff_delimiter(text.split("\n", 1)[0])
    first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"'), [])
    return first, delimiter


def check_headers(files: list[SourceFile], header: list[str], *, delimiter: str, encoding: str) -> None:
    """Every non-empty file must start with the same header as the first, or columns would shift."""
    for f in files[1:]:
        if f.size == 0:
            continue
        other, _ = csv_header(f, delimiter=delimiter, encoding=encoding)
        if other != header:
            raise UserError(
                f"{f.path}: header {_short(other)} differs from {files[0].path} header {_short(header)}"
            )


def _short(names: list[str]) -> str:
    text = ",".join(names)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def read_csv(
    spark: SparkSession,
    files: list[SourceFile],
    *,
    columns: list[str],
    delimiter: str,
    header: bool,
    encoding: str,
    multiline: bool,
) -> DataFrame:
    """All fields as strings plus :data:`CORRUPT` (set by Spark for rows with the wrong field count)."""
    schema = T.StructType([T.StructField(c, T.StringType()) for c in [*columns, CORRUPT]])
    return (
        spark.read.schema(schema)
        .option("header", header)
        .option("sep", delimiter)
        .option("encoding", encoding)
        .option("multiLine", multiline)
        .option("quote", '"')
        .option("escape", '"')  # RFC 4180: a quote inside a quoted field is doubled
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .csv([f.path for f in files])
    )


def json_keys(spark: SparkSession, files: list[SourceFile], *, encoding: str) -> list[str]:
    """Every top-level key in the JSON lines (Spark's schema inference over all records).

    A full pass, on purpose: a key that first appears after a sample would otherwise be
    dropped by the reader without a trace.
    """
    inferred = (
        spark.read.option("columnNameOfCorruptRecord", CORRUPT)
        .option("encoding", encoding)
        .option("mode", "PERMISSIVE")
        .json([f.path for f in files])
        .schema
    )
    return [f.name for f in inferred.fields if f.name != CORRUPT]


def read_json(spark: SparkSession, files: list[SourceFile], *, keys: list[str], encoding: str) -> DataFrame:
    """Every key as a string (nested values as their JSON text) plus :data:`CORRUPT` for bad lines."""
    schema = T.StructType([T.StructField(k, T.StringType()) for k in [*keys, CORRUPT]])
    return (
        spark.read.schema(schema)
        .option("mode", "PERMISSIVE")
        .option("encoding", encoding)
        .option("columnNameOfCorruptRecord", CORRUPT)
        .json([f.path for f in files])
    )


def read_parquet(spark: SparkSession, files: list[SourceFile]) -> DataFrame:
    """Parquet files with merged schemas; a type conflict names the two files."""
    try:
        df = spark.read.option("mergeSchema", True).parquet(*[f.path for f in files])
        df.schema  # noqa: B018 - resolve now, so a merge conflict surfaces here
    except Exception as exc:
        conflict = parquet_conflict(files)
        if conflict:
            raise UserError(conflict) from None
        raise UserError(f"{files[0].path}: cannot read Parquet files: {str(exc).splitlines()[0]}") from None
    return df


def parquet_conflict(files: list[SourceFile]) -> str | None:
    """The first column whose type differs between two files, as a one-line message."""
    import pyarrow.parquet as pq

    first_seen: dict[str, tuple[str, object]] = {}
    for f in files:
        try:
            schema = pq.read_schema(fs.local_path(f.path))
        except Exception as exc:
            return f"{f.path}: cannot read Parquet schema ({exc.__class__.__name__})"
        for field in schema:
            seen = first_seen.setdefault(field.name, (f.path, field.type))
            if seen[1] != field.type:
                return (
                    f"{f.path}: column {field.name!r} is {field.type} but {seen[0]} has {seen[1]}: "
                    "Parquet files with conflicting types cannot be merged"
                )
    return None
