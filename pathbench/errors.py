"""Errors meant for people.

Every error pathbench raises on bad input, a missing file or a gated model is a
:class:`PathbenchError`. Its message says what was expected, what was found and what
to do; the CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class PathbenchError(Exception):
    """A user-facing error: bad input, missing data, no access to weights."""


class ModelNotFoundError(PathbenchError, KeyError):
    """An unknown model name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsAccessError(PathbenchError):
    """Weights that cannot be loaded: gated, offline without a cached copy, bad file."""


class DataError(PathbenchError):
    """A dataset that is missing, malformed or inconsistent."""
