"""What bad input raises, in one light module: the command prints these as one line, without a
traceback, and imports nothing heavy to catch them (``kdmem --help`` starts before torch loads)."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""


class DataError(ValueError):
    """Data that cannot be used; the message names the problem and the fix."""


class ModelError(ValueError):
    """A model that cannot be used; the message names the problem and the fix."""


class TrainingError(RuntimeError):
    """Training that cannot go on; the message names the step, what was kept and the fix."""


class RehearsalError(RuntimeError):
    """A rehearsal that could not start, or a stage that failed in it; the message names which."""


USER_ERRORS = (ConfigError, DataError, ModelError, TrainingError, RehearsalError, FileNotFoundError)
"""Anything else is a bug."""
