"""The one exception type the CLI turns into a single clear sentence and a non-zero exit."""


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a checkpoint). The message is one sentence that
    names the file or option and the problem; the CLI prints it without a traceback."""
