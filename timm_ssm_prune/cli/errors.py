"""The CLI's user-facing error (standard library only)."""


class CliError(Exception):
    """A user-facing error: printed as one ``error:`` line without a traceback, exit status 2."""
