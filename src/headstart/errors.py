"""The one exception type users see: the CLI prints its message as a single line and exits 1."""


class HeadstartError(Exception):
    """A user-facing error: bad input, bad config, or a file that is not what it should be.

    The message names the input and what was expected; no traceback is shown for it.
    """
