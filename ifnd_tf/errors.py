"""The failures an entry point turns into one `<program>: error: ...` line (cli.py)."""


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


class DataError(ValueError):
    """Missing, corrupt or unknown data; the message names the file or flag."""


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite."""


class RunDirError(ValueError):
    """The run directory cannot be used as asked (locked, unreadable checkpoints, other data,
    not writable); the message names the file or directory."""
