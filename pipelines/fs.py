"""Small file I/O for run summaries, reports and plots.

Local paths, Unity Catalog Volumes (``/Volumes/...``, a local mount on Databricks) and
``dbfs:/`` (mounted at ``/dbfs``) use the local filesystem; other URIs (``s3://``,
``abfss://``, ``gs://``) go through :mod:`pyarrow.fs`. Table data never goes through
here: that is :mod:`pipelines.delta`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import ConflictError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f/\\]")


def is_remote(path: str) -> bool:
    """True for URIs that are not on a local (or locally mounted) filesystem."""
    m = _SCHEME.match(str(path))
    return bool(m) and m.group(1).lower() not in ("file", "dbfs")


def local_path(path: str) -> str:
    """Map ``file://`` and ``dbfs:/`` URIs to local paths; leave other paths as they are."""
    path = str(path)
    if path.startswith("file://"):
        return path[len("file://"):]
    if path.startswith("dbfs:/"):
        return "/dbfs/" + path[len("dbfs:/"):].lstrip("/")
    return path


def join(root: str, *parts: str) -> str:
    """Join path parts under ``root``, refusing any part that could leave it.

    A part may not be empty, ``.``/``..``, or contain a separator or control
    character, so a column or table name can never write outside the output root.
    """
    for part in parts:
        if part in ("", ".", "..") or _UNSAFE_NAME.search(part):
            raise ValueError(f"unsafe path component {part!r} under {root!r}")
    return "/".join([str(root).rstrip("/"), *parts])


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename) where the filesystem allows."""
    if is_remote(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        parent = inner.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(data)
        return
    target = Path(local_path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_text(path: str) -> str:
    if is_remote(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            return f.read().decode("utf-8")
    return Path(local_path(path)).read_text(encoding="utf-8")


def exists(path: str) -> bool:
    if is_remote(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.get_file_info(inner).type != pafs.FileType.NotFound
    return Path(local_path(path)).exists()


@contextmanager
def exclusive(path: str, *, owner: str) -> Iterator[None]:
    """Hold the lock file ``path`` while the block runs, or raise :class:`ConflictError`.

    The file is created atomically (``O_EXCL``) and records ``owner``, host and pid. A lock
    left by a dead process on this host (a killed run) is taken over. Remote URIs have no
    atomic create here and are not locked.
    """
    if is_remote(path):
        yield
        return
    target = Path(local_path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    me = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for _ in range(2):
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(target)
            if (holder is None and time.time() - _mtime(target) > 10) or (holder is not None and not _alive(holder)):
                target.unlink(missing_ok=True)  # the holder died (or left no record): take over
                continue
            if holder is None:  # created this instant, its record not written yet
                raise ConflictError(f"{target}: another run is taking the lock at this moment; wait for it to "
                                    "finish, or delete the file if that run is gone") from None
            raise ConflictError(
                f"{target}: held by run {holder.get('owner')} (pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')}); wait for it to finish, or delete the file if that run is gone") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:
        raise ConflictError(f"{target}: another run took the lock at the same time; run again")
    try:
        yield
    finally:
        if _lock_holder(target) == me:
            target.unlink(missing_ok=True)


def _lock_holder(target: Path) -> dict | None:
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _mtime(target: Path) -> float:
    try:
        return target.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so it holds
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True
