"""One exception for bad input, so the CLI can print one line and exit 2."""


class UserError(Exception):
    """Bad input: message is one line naming the key/file/value and what is valid; CLI exits 2."""
