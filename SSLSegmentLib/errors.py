"""Errors that the command line reports to the user as such (exit code 2)."""


class InputError(ValueError):
    """Bad user input: the message names the case or file and the problem."""


class OutputError(InputError):
    """An output could not be written (read-only folder, full disk, a file in the way): the
    message names the path and what to do. Reported like bad input (exit code 2)."""
