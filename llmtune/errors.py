"""User-facing error types: each carries a one-line message and ends the run with exit code 2."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, bad checkpoint); shown as one line."""

    exit_code = 2


class ConfigError(UserError):
    """An unknown key or an invalid value in the composed configuration."""


class DataError(UserError):
    """Input data that cannot be read or is unusable (missing file, empty dataset, bad column)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, incomplete or of the wrong architecture."""
