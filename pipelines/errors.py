"""User-facing errors.

A :class:`UserError` is a problem with the input or the configuration (a missing path,
an unknown key, a non-numeric column). Jobs turn it into one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration. The message is one line naming the file, column or key."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: the message is what the user sees instead of a traceback.
        super().__init__(" ".join(str(message).split()))


class DataFileError(Exception):
    """A committed data file of a table cannot be read (corrupt, truncated, vanished).

    An I/O fault, not bad input: a storage read that failed looks the same. Jobs print the
    one-line message (it names the file) and exit 1, without a traceback.
    """


class ConflictError(UserError):
    """Another run holds the same output (a lock, or a concurrent Delta commit): nothing of
    this run was committed over it, and running again later is safe. Exit code 1."""

    exit_code = 1
