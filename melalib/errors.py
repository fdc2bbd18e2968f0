"""The project's own error types: every failure a user can meet is one of these."""

from __future__ import annotations

from pathlib import Path


class MelalibError(Exception):
    """Base class of every error melalib raises on purpose."""


class DataError(MelalibError, ValueError):
    """Bad input data; the message names the file, row and column where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | str | None = None,
        column: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.row = row
        self.column = column
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.detail = message
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ImageError(DataError):
    """An image that is missing, empty, truncated or not an image."""


class ConfigError(MelalibError, ValueError):
    """A configuration with unknown keys, wrong types or impossible values."""


class LeakageError(MelalibError):
    """A group (patient / lesion) found on both sides of a split."""


class CheckpointError(MelalibError):
    """A checkpoint that does not belong to the current configuration."""


class RunExistsError(MelalibError):
    """A run directory that would be overwritten without `overwrite=True`."""


class WriteError(MelalibError):
    """A file melalib writes could not be written (disk full, no permission); the
    previous version of the file is left as it was."""


class RunLockedError(MelalibError):
    """Another process holds the run folder (a second `train` of the same run)."""
