"""The base of the errors that vlpbench phrases for the user. The CLI prints one as a single line,
without a traceback, and exits with its ``exit_code``; catching the base needs no heavy import."""


class UserError(Exception):
    """A problem with the user's input, files or machine, named so that it can be fixed."""
    exit_code = 2
