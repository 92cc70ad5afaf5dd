"""Errors the load generator reports to its user (never tracebacks)."""

from __future__ import annotations


class LoadgenError(Exception):
    """A problem the user can fix (bad workload file, bad flag, unreachable server)."""


class WorkloadError(LoadgenError):
    """An invalid workload or tier file: names the file and the path inside it.

    ``str(err)`` reads like ``smoke.yaml: mix[2].share: must be > 0``.
    """

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file = file
        self.path = path
        self.message = message
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {message}")
