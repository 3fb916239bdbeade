"""Errors the CLI turns into one red line and exit code 2 (no traceback)."""


class RlhfLabError(Exception):
    """A user-facing error: bad params, bad input data, a model source that can't be found."""


class ConfigError(RlhfLabError):
    """params.yaml is malformed: unknown key, wrong type, bad combination."""


class DataError(RlhfLabError):
    """Input data is unusable (too many invalid rows, missing file...)."""


class ModelSourceError(RlhfLabError):
    """A model source could not be resolved or loaded."""


class StageBusyError(RlhfLabError):
    """Another run of the same stage holds its lock in this checkout."""


class NonFiniteLossError(RlhfLabError):
    """Too many optimiser steps were skipped because the loss or gradient was not finite."""
