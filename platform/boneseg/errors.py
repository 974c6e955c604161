"""The few exception types the CLI turns into one clear line (and exit code 2)."""


class BonesegError(Exception):
    """A user-facing error: the message says what, where, and the fix."""


class ConfigError(BonesegError):
    """params.yaml / experiment / --set is wrong."""


class DataError(BonesegError):
    """An input file or folder is missing, unreadable or inconsistent."""


class DiskFull(BonesegError):
    """A write ran out of space (ENOSPC, EDQUOT); the previous output is unchanged."""
