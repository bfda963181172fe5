"""Errors that carry an actionable message for the user (no traceback needed)."""


class CrammingError(Exception):
    """Base class: the message says what went wrong and how to fix it."""


class ConfigError(CrammingError):
    """The composed configuration is invalid."""


class DataError(CrammingError):
    """A corpus, task file or tokenizer is missing, empty or malformed."""


class CheckpointError(CrammingError):
    """A checkpoint or model folder is missing, corrupt or incompatible."""


class TrainingError(CrammingError):
    """Training cannot continue (e.g. a non-finite loss)."""


class RunInUseError(CrammingError):
    """Another live process is running in the same run folder."""
