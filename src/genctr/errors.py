"""Errors a user can act on: each names the file, column, row or config key at fault.

The CLI prints these as one clear message instead of a traceback.
"""

import sys


class GenctrError(Exception):
    """Base class of every error caused by input rather than by a bug."""


class ConfigError(GenctrError):
    """A YAML or option value that is unknown, missing or out of range."""


class DataError(GenctrError):
    """A data file that is missing, empty or holds values its schema does not allow."""


def notice(message: str) -> None:
    """Tell the user about a documented treatment of their data (values filled, counted), on
    stderr, without stopping: it is not an error, but it must not be silent."""
    print(f"note: {message}", file=sys.stderr)
