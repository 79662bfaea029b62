"""User-facing errors.

Anything the user can fix (bad file, bad option, bad config) is raised as
:class:`SsmtlError`. The CLI turns it into one line on stderr and exit code 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SsmtlError(Exception):
    """An error caused by the user's input. The message is shown as-is."""

    exit_code = 2


class ConfigError(SsmtlError):
    """A configuration value is invalid. ``rows`` holds (field, message) pairs."""

    def __init__(self, message: str, rows: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.rows = rows or []


class InputFileError(SsmtlError):
    """An input file is missing, unreadable or malformed. Names the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
