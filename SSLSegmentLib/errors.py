"""Errors that the command line reports to the user as such (exit code 2)."""


class InputError(ValueError):
    """Bad user input: the message names the case or file and the problem."""
