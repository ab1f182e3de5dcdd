"""One error type for bad user input: the CLI prints its message on one line and exits 2."""


class UsageError(Exception):
    """Bad input named precisely (file, line, column, key); never shown as a traceback."""
