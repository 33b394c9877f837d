"""Errors a user can read: every one names the file (or object) and the problem."""

from __future__ import annotations

from pathlib import Path


class HIPTError(Exception):
    """Base class of the package's user-facing errors.

    Caught by the CLI, which prints ``error: <message>`` and exits non-zero instead of a traceback.
    """


class InputFileError(HIPTError):
    """An input file is missing, unreadable, of the wrong kind or inconsistent.

    The message always starts with the path so that a batch log says which file failed.
    """

    def __init__(self, path: str | Path, problem: str, hint: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        msg = f"{self.path}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class SlideError(InputFileError):
    """A whole-slide image cannot be opened or read as asked."""


class MissingMPPError(SlideError):
    """The slide does not say its physical resolution; pass it explicitly (``--mpp``)."""


class ChecksumError(InputFileError):
    """A downloaded or cached file does not have the expected sha256."""


class CheckpointError(InputFileError):
    """A checkpoint file is missing, an LFS pointer, truncated, or does not match the model."""
